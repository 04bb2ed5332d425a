"""What the ``torchvision:`` and ``timm:`` families share: turning ``<prefix>:<model>`` into an
architecture class, or an unknown name into one error with close matches. A family is the
registry's way to stand for a whole library of networks (``rsc_core.registry``)."""
from __future__ import annotations

import difflib
from typing import ClassVar

from rsc_core.training.architectures import Architecture
from rsc_core.errors import UnknownNameError


class LibraryArchitecture(Architecture):
    """One network of a library; ``model`` is its name there."""

    model: ClassVar[str] = ""


class ModelFamily:
    """Subclasses set ``name`` (the prefix with its colon), ``architecture`` (the
    ``LibraryArchitecture`` subclass that builds one model) and ``library``, and implement
    ``models`` and ``known``."""

    name: ClassVar[str] = ""
    library: ClassVar[str] = ""
    architecture: ClassVar[type[LibraryArchitecture]] = LibraryArchitecture

    @classmethod
    def models(cls) -> list[str]:
        """Every model name of the library (for close matches)."""
        raise NotImplementedError

    @classmethod
    def known(cls, model: str) -> bool:
        return model in cls.models()

    @classmethod
    def member(cls, model: str) -> type[LibraryArchitecture]:
        """The architecture class of ``<prefix>:<model>``."""
        if not cls.known(model):
            names = cls.models()
            close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(cls.name + c for c in close)}?" if close else
                    f"{cls.library} has {len(names)} models, e.g. {', '.join(names[:4])}")
            raise UnknownNameError(f"unknown architecture {cls.name}{model!r}; {hint}")
        return type(f"{cls.architecture.__name__}_{model}", (cls.architecture,),
                    {"name": cls.name + model, "model": model,
                     "description": f"{cls.library} model {model}, untrained"})
