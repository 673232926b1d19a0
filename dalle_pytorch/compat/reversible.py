"""`dalle_pytorch.reversible`: DALLE-pytorch 1.6.6's layer containers, `SequentialSequence` and
`ReversibleSequence`, with its constructors, argument routing and state-dict layout.

    SequentialSequence(layers)(x):  x = x + f(x); x = x + g(x) for each (f, g) of `layers`
    ReversibleSequence(blocks)(x):  x1 = x2 = x; y1 = x1 + f(x2); y2 = x2 + g(y1); ...; out = (y1 + y2) / 2

`args_route` sends a forward keyword to the f and / or g of each layer: {name: [(to_f, to_g), ...]}.
The outputs and gradients are DALLE-pytorch's; `ReversibleSequence` here backpropagates with ordinary
autograd (it keeps the activations): the memory-saving reversible backward is this package's own
`Transformer(reversible=True)` (and `DALLE(reversible=True)`).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["route_args", "Deterministic", "ReversibleBlock", "SequentialSequence", "ReversibleSequence"]


def route_args(router: dict, args: dict, depth: int) -> list[tuple[dict, dict]]:
    """(f keywords, g keywords) per layer: each keyword of `args` named in `router` goes where its routes say."""
    routed = [({}, {}) for _ in range(depth)]
    for key, value in args.items():
        if key not in router:
            continue
        for layer, (to_f, to_g) in enumerate(router[key]):
            if to_f:
                routed[layer][0][key] = value
            if to_g:
                routed[layer][1][key] = value
    return routed


class Deterministic(nn.Module):
    """A module under DALLE-pytorch's name for it (`net`); the RNG bookkeeping of its reversible backward is not
    needed with ordinary autograd."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args, record_rng=False, set_rng=False, **kwargs):
        return self.net(*args, **kwargs)


class ReversibleBlock(nn.Module):
    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f, self.g = Deterministic(f), Deterministic(g)

    def forward(self, x, f_args=None, g_args=None):
        x1, x2 = torch.chunk(x, 2, dim=2)
        y1 = x1 + self.f(x2, **(f_args or {}))
        y2 = x2 + self.g(y1, **(g_args or {}))
        return torch.cat((y1, y2), dim=2)


def _check_routes(args_route: dict, depth: int) -> None:
    if not all(len(route) == depth for route in args_route.values()):
        raise ValueError("each argument route map must have the same depth as the number of layers")


class SequentialSequence(nn.Module):
    def __init__(self, layers, args_route=None, layer_dropout=0.):
        super().__init__()
        self.args_route = dict(args_route or {})
        _check_routes(self.args_route, len(layers))
        self.layers, self.layer_dropout = layers, layer_dropout

    def forward(self, x, **kwargs):
        for (f, g), (f_args, g_args) in zip(self.layers, route_args(self.args_route, kwargs, len(self.layers))):
            x = x + f(x, **f_args)
            x = x + g(x, **g_args)
        return x


class ReversibleSequence(nn.Module):
    def __init__(self, blocks, args_route=None):
        super().__init__()
        self.args_route = dict(args_route or {})
        _check_routes(self.args_route, len(blocks))
        self.blocks = nn.ModuleList([ReversibleBlock(f, g) for f, g in blocks])

    def forward(self, x, **kwargs):
        x = torch.cat((x, x), dim=-1)
        for block, (f_args, g_args) in zip(self.blocks, route_args(self.args_route, kwargs, len(self.blocks))):
            x = block(x, f_args=f_args, g_args=g_args)
        return torch.stack(x.chunk(2, dim=-1)).mean(dim=0)
