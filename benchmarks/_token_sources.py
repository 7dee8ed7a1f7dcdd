"""Token sources of the SAE-training benchmark (bench_sae_training.py).

Each returns ``(d_in, heldout tokens, endless iterator of training batches)``, all on ``device``:

- ``synthetic_source``: sparse non-negative combinations of random unit directions plus an offset
  and noise (``SyntheticTokens``), so that FVU is meaningful;
- ``store_source``: one hook point of an activation store (``saeuron cache``), shuffled, its first
  batches held out.
"""

from __future__ import annotations

import torch


class SyntheticTokens:
    """Tokens x = offset + sum_j c_j * atom_j + noise, with ``active`` atoms per token drawn from
    ``n_atoms`` unit directions at Zipf-like frequencies and log-normal coefficients."""

    def __init__(self, d_in: int, n_atoms: int, active: int, noise: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.atoms = torch.randn(n_atoms, d_in, generator=g)
        self.atoms /= self.atoms.norm(dim=1, keepdim=True)
        self.probs = 1.0 / torch.arange(1, n_atoms + 1).float() ** 0.7
        self.scale = torch.exp(0.5 * torch.randn(n_atoms, generator=g))
        self.offset = 2.0 * torch.randn(d_in, generator=g)
        self.active, self.noise = active, noise

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(self.probs.expand(n, -1), self.active, replacement=False, generator=gen)
        coef = self.scale[idx] * torch.exp(0.5 * torch.randn(n, self.active, generator=gen))
        x = torch.einsum("na,nad->nd", coef, self.atoms[idx]) + self.offset
        return x + self.noise * torch.randn(n, x.shape[1], generator=gen)


def synthetic_source(args, device: torch.device):
    data = SyntheticTokens(args.d_in, args.atoms, args.active, args.noise, args.seed)
    heldout = data.batch(args.heldout, torch.Generator().manual_seed(args.seed + 999))
    gen = torch.Generator().manual_seed(args.seed + 1)

    def batches():
        while True:
            yield data.batch(args.batch_size, gen).to(device)

    return args.d_in, heldout.to(device), batches()


def store_source(args, device: torch.device):
    from saeuron_core.store import ActivationStore

    store = ActivationStore(args.store)
    if args.point not in store.points:
        raise SystemExit(f"--point must be one of {store.points}")
    d_in = store.meta["points"][args.point]["channels"]
    stream = store.iter_token_batches(args.point, args.batch_size, shuffle=True, seed=args.seed, epochs=args.epochs)
    # held out: the first batches of the shuffled stream, never trained on (disjoint within one epoch)
    held = []
    while sum(len(h) for h in held) < args.heldout:
        held.append(next(stream))
    return d_in, torch.cat(held)[: args.heldout].to(device), (x.to(device) for x in stream)
