"""Exact Hessian-vector products for ReLU MLPs on flattened images (rsc's ``MLP``,
``LargeMLP``, ...), many LiSSA chains at once, written out by hand (Pearlmutter's R-operator).

Why: LiSSA's step is one HVP per chain on a Hessian sample of ONE example, so every weight
gradient is an outer product (a matrix product with inner dimension 1). Through ``vmap`` these
become batched matrix products with inner dimension 1, which the CPU BLAS runs at a small
fraction of memory speed (profiled: about 20 ms for the first layer's 10 x 256 x 784 outer
products, where writing those floats takes about 2 ms), and the flat result is assembled with
a concatenation. Here each outer product is one broadcast multiply written straight into the
flat output, so a step costs a few passes over the r x P floats it must touch.

The maths (per chain, batch of b rows, CE loss averaged over them): with a_0 = x,
z_l = a_{l-1} W_l^T + b_l, a_l = relu(z_l), logits z_L, and the direction (V_l, c_l):
  R z_l = R a_{l-1} W_l^T + a_{l-1} V_l^T + c_l,   R a_l = R z_l * 1[z_l > 0],   R a_0 = 0;
  d_L = (p - onehot) / b,   R d_L = (p * R z_L - p (p . R z_L)) / b   (p = softmax(z_L));
  d_{l-1} = (d_l W_l) * 1[z_{l-1} > 0],   R d_{l-1} = (R d_l W_l + d_l V_l) * 1[z_{l-1} > 0];
  H v for W_l = R d_l^T a_{l-1} + d_l^T R a_{l-1},   for b_l = sum_rows R d_l.
(ReLU's second derivative is zero almost everywhere.) The tests check it against the generic
``torch.func`` products in float64."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mlp_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Linear] | None:
    """The model's Linear layers in order, if it is a ReLU MLP this module handles: it has
    ``hidden_names`` (rsc's MLPs) and its parameters are exactly those layers' weights and
    biases, in ``names``' order. Anything else returns None (the generic path is used)."""
    hidden = getattr(model, "hidden_names", None)
    fc = getattr(model, "fc", None)
    if hidden is None or not isinstance(fc, nn.Linear) or list(model.buffers()):
        return None
    layers = [getattr(model, name, None) for name in hidden] + [fc]
    if not all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in layers):
        return None
    expected = [f"{n}.{p}" for n in (*hidden, "fc") for p in ("weight", "bias")]
    return layers if list(names) == expected else None


@torch.no_grad()
def mlp_hvp_batched(layers: Sequence[nn.Linear], vectors: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, out: torch.Tensor | None = None, alpha: float = 1.0,
                    plus: torch.Tensor | None = None) -> torch.Tensor:
    """plus + alpha H_k v_k for every chain k: ``vectors`` r x P (the flat layout: each layer's
    weight then bias), ``x`` r x b x d flattened inputs, ``y`` r x b labels, ``plus`` a flat
    P vector added to every chain's product (None: nothing); returns r x P, written into
    ``out`` when given (a solver's reused buffer: a fresh r x P allocation per step costs
    page faults that measured several times the products themselves).

    Why alpha and plus: a LiSSA step is memory-bound, and each extra pass over the r x P
    floats costs as much as a layer's products. alpha is applied to the two small backward
    seeds (the product is linear in them) and plus is added while each block is written, so
    the affine form costs no pass of its own."""
    r, batch = x.shape[0], x.shape[1]
    directions, offset = [], 0
    for layer in layers:
        out_f, in_f = layer.weight.shape
        weight = vectors[:, offset:offset + out_f * in_f].view(r, out_f, in_f)
        offset += out_f * in_f
        bias = vectors[:, offset:offset + out_f]
        offset += out_f
        directions.append((weight, bias))
    # forward pass and its R-pass
    activations, r_activations, masks = [x], [torch.zeros_like(x)], []
    a, ra = x, None
    for index, (layer, (weight, bias)) in enumerate(zip(layers, directions)):
        z = F.linear(a, layer.weight, layer.bias)
        rz = torch.bmm(a, weight.transpose(1, 2)) + bias.unsqueeze(1)
        if ra is not None:
            rz += F.linear(ra, layer.weight)
        if index < len(layers) - 1:
            mask = z > 0
            masks.append(mask)
            a, ra = z * mask, rz * mask
            activations.append(a)
            r_activations.append(ra)
        else:
            logits, r_logits = z, rz
    # backward pass and its R-pass
    p = torch.softmax(logits, dim=-1)
    delta = (p - F.one_hot(y, p.shape[-1]).to(p.dtype)) * (alpha / batch)
    r_delta = (p * r_logits - p * (p * r_logits).sum(-1, keepdim=True)) * (alpha / batch)
    out = torch.empty_like(vectors) if out is None else out
    offset = sum(layer.weight.numel() + layer.bias.numel() for layer in layers)
    for index in range(len(layers) - 1, -1, -1):
        layer, (weight, _) = layers[index], directions[index]
        out_f, in_f = layer.weight.shape
        offset -= out_f * in_f + out_f
        grad_w = out[:, offset:offset + out_f * in_f].view(r, out_f, in_f)
        grad_b = out[:, offset + out_f * in_f:offset + out_f * in_f + out_f]
        a_prev, ra_prev = activations[index], r_activations[index]
        plus_w = None if plus is None else plus[offset:offset + out_f * in_f].view(out_f, in_f)
        if batch == 1:  # outer products as broadcast multiplies, written in place
            if plus_w is None:
                torch.mul(r_delta.transpose(1, 2), a_prev, out=grad_w)
            else:
                torch.addcmul(plus_w, r_delta.transpose(1, 2), a_prev, out=grad_w)
            if index > 0:
                grad_w.addcmul_(delta.transpose(1, 2), ra_prev)
        else:
            if plus_w is None:
                torch.bmm(r_delta.transpose(1, 2), a_prev, out=grad_w)
            else:
                torch.baddbmm(plus_w.expand(r, -1, -1), r_delta.transpose(1, 2), a_prev,
                              out=grad_w)
            if index > 0:
                grad_w.baddbmm_(delta.transpose(1, 2), ra_prev)
        if plus is None:
            grad_b.copy_(r_delta.sum(1))
        else:
            torch.add(plus[offset + out_f * in_f:offset + out_f * in_f + out_f],
                      r_delta.sum(1), out=grad_b)
        if index > 0:
            mask = masks[index - 1]
            r_back = torch.matmul(r_delta, layer.weight) + torch.bmm(delta, weight)
            delta = torch.matmul(delta, layer.weight) * mask
            r_delta = r_back * mask
    return out


@torch.no_grad()
def mlp_gradient_batched(layers: Sequence[nn.Linear], x: torch.Tensor, y: torch.Tensor,
                         out: torch.Tensor | None = None, margin: bool = False) -> torch.Tensor:
    """Per chain k, the gradient of the mean CE loss over its rows ``x[k]`` (r x b x d) with
    labels ``y[k]`` (r x b): r x P in the flat layout of ``mlp_hvp_batched``, written into
    ``out`` when given (a reused buffer: see ``mlp_hvp_batched`` on page faults). With
    ``margin``, the gradient of the mean logit margin z_y - logsumexp_{j != y} z_j instead
    (the self-influence auditor's statistic).

    Why by hand: the reference emulation of group influence (``reference_lissa.py``) needs one
    sampled example's gradient per chain and step; through ``vmap`` its weight gradients are
    the slow inner-dimension-1 batched products this module exists to avoid."""
    r, batch = x.shape[0], x.shape[1]
    activations, masks, a = [x], [], x
    for index, layer in enumerate(layers):
        z = F.linear(a, layer.weight, layer.bias)
        if index < len(layers) - 1:
            mask = z > 0
            masks.append(mask)
            a = z * mask
            activations.append(a)
    onehot = F.one_hot(y, z.shape[-1]).to(z.dtype)
    if margin:  # d phi / d z = onehot - softmax over the other classes
        delta = (onehot - torch.softmax(z.masked_fill(onehot.bool(), float("-inf")), -1)) / batch
    else:
        delta = (torch.softmax(z, dim=-1) - onehot) / batch
    total = sum(layer.weight.numel() + layer.bias.numel() for layer in layers)
    out = torch.empty(r, total, dtype=x.dtype, device=x.device) if out is None else out
    offset = total
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        out_f, in_f = layer.weight.shape
        offset -= out_f * in_f + out_f
        grad_w = out[:, offset:offset + out_f * in_f].view(r, out_f, in_f)
        if batch == 1:  # an outer product: one broadcast multiply (see the module docstring)
            torch.mul(delta.transpose(1, 2), activations[index], out=grad_w)
        else:
            torch.bmm(delta.transpose(1, 2), activations[index], out=grad_w)
        out[:, offset + out_f * in_f:offset + out_f * in_f + out_f] = delta.sum(1)
        if index > 0:
            delta = torch.matmul(delta, layer.weight) * masks[index - 1]
    return out
