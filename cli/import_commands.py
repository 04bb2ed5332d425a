"""``rsc import``: a model trained outside rsc becomes a run folder (``rsc_core.imports``)."""
from __future__ import annotations

import click

from rsc_core.errors import SpecError
from rsc_core.runs.imports import TrainingSet, declared_training_set, import_run
from rsc_core.data.spec import SpuriousSpec, parse_int_list
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.training.trainer import MAX_TRAIN_SEED

from .options import data_options
from .output import echo_json
from .train_commands import runs_dir_option
from .train_options import build_train_config, split_train_kwargs, train_options


@click.command("import")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--spec", "spec_text", default=None, metavar="NAME",
              help="The training set the model was trained on: a spec (xrayv8-3-0-0, rsc's "
                   "planted set, e.g. from `rsc data export`) or a membership spec "
                   "(memxrayv20-3-0-0: its target members; then `rsc mia --target-run` can "
                   "attack the import).")
@click.option("--dataset", default=None,
              help="Instead of --spec: the dataset as its files are (a user's own data).")
@click.option("--planted", default=None, metavar="FILE|i,j,k",
              help="With --dataset: training indices of images you planted something on "
                   "yourself (a file, one per line, or an inline list); recorded as the run's "
                   "spurious examples, which `rsc remove` forgets by default.")
@train_options
@data_options
@runs_dir_option
@click.option("--force", is_flag=True, help="Import again even if this import exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's metrics as JSON.")
def import_command(model_file, spec_text, dataset, planted, data_dir, download, runs_dir,
                   force, as_json, **kwargs) -> None:
    """Make a run folder from MODEL_FILE, a model trained outside rsc, so that rsc score,
    sensitivity, mia --target-run and remove work on it.

    MODEL_FILE is a state dict (torch.save(model.state_dict(), PATH)) or a checkpoint dict
    holding one (model_state_dict, state_dict); it is read with torch.load(weights_only=True),
    so a whole pickled model is refused. The weights must fit --arch (or --model) built for
    the dataset's image shape and classes. The recipe options record how the model was
    trained: retrain removals and membership shadow models train with them.

    Examples:

      rsc import weights.pt --arch torchvision:resnet18 --spec xrayv8-10-0-0

      rsc import weights.pt --arch LargeMLP --dataset xray --planted planted.txt
    """
    train_kwargs, _ = split_train_kwargs(kwargs)
    seeds = parse_int_list(train_kwargs.pop("train_seed"), "training seeds", MAX_TRAIN_SEED)
    if len(seeds) != 1:
        raise SpecError(f"an imported model has one training seed, got {len(seeds)}")
    config = build_train_config(train_seed=seeds[0], **train_kwargs)
    outcome = import_run(model_file, config,
                         _training_set(spec_text, dataset, planted, data_dir, download),
                         planted=planted, runs_dir=runs_dir, force=force,
                         on_wait=lambda line: click.echo(line, err=True))
    metrics = outcome.run.metrics or {}
    if as_json:
        echo_json({"run": str(outcome.run.path), "reused": outcome.reused, **metrics})
        return
    click.echo(f"{'reused earlier import' if outcome.reused else 'imported'}: "
               f"{outcome.run.path}")
    click.echo(f"clean test accuracy {metrics['clean_accuracy']:.4f}, training accuracy "
               f"{metrics['train_accuracy']:.4f}")
    if metrics.get("score"):
        score = metrics["score"]
        click.echo(f"spurious score ({score['pattern']}, target {score['target']}, seed "
                   f"{score['seed']}): {score['score']:.4f}")


def _training_set(spec_text: str | None, dataset: str | None, planted: str | None,
                  data_dir, download) -> TrainingSet:
    """--spec NAME, or --dataset NAME [--planted ...]: exactly one of them."""
    if bool(spec_text) == bool(dataset):
        raise SpecError("say what the model was trained on: --spec NAME (rsc's planted set, or "
                        "memNAME for a membership target) or --dataset NAME (its files as "
                        "they are), not both")
    if planted is not None and not dataset:
        raise SpecError("--planted goes with --dataset: it lists images planted in the "
                        "dataset's own files")
    if spec_text:
        return declared_training_set(spec_text, data_dir, download)
    spec = SpuriousSpec.build(dataset)
    return TrainingSet(spec, None, build_spurious_dataset(spec, data_dir, download))


COMMANDS = [import_command]
