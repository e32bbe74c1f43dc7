"""Eager PyTorch CPU implementation of the `gmm` IPLD run (Appendix B.1, Algorithm 2), written
independently of the Rust code for side-by-side speed and quality: same data construction, MLP
epsilon-network (3 x 128, ReLU, 128-d sinusoidal timestep embedding concatenated to z), linear
decoder without bias, DDPM linear schedule (K = 1000), loss of eq. (64) with the simple diffusion
loss and the prior term, KL annealing, adaptive Langevin particles (momentum 0.9, RMSProp 0.999,
h = 0.1, noise scaled by 1/|B| and preconditioned from the second epoch), AdamW(1e-3, wd 0.01)
on theta and phi, then 10,000 ancestral DDPM samples and the unbiased MMD^2 (RBF, gamma 0.1)
against the 10,000 training points.

    python ipld_gmm.py --particles 16 --steps 1000

prints one JSON line with steps_per_second (training loop only) and mmd.
"""

import argparse
import json
import math
import time

import torch
from torch import nn


def gmm_data(gen, n=10_000, d=64):
    c = torch.randint(0, 25, (n,), generator=gen)
    means = torch.stack([8.0 * (c // 5 - 2), 8.0 * (c % 5 - 2)], 1).float()
    z = means + torch.randn(n, 2, generator=gen)
    q, r = torch.linalg.qr(torch.randn(d, 2, generator=gen))
    a = (q * torch.sign(torch.diagonal(r))).T  # 2 x d, orthonormal rows
    return z @ a


class Eps(nn.Module):
    def __init__(self, dim=2, hidden=128, layers=3, emb=128):
        super().__init__()
        half = emb // 2
        self.register_buffer(
            "freqs", torch.exp(-math.log(10_000.0) * torch.arange(half) / half)
        )
        sizes = [dim + emb] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(hidden, dim)

    def forward(self, z, k):
        arg = k.float()[:, None] * self.freqs[None, :]
        h = torch.cat([z, torch.sin(arg), torch.cos(arg)], 1)
        for lin in self.hidden:
            h = torch.relu(lin(h))
        return self.out(h)


def mmd2(x, y, gamma=0.1, block=2048):
    def ksum(a, b, same):
        s = 0.0
        for i in range(0, len(a), block):
            d = torch.cdist(a[i : i + block].double(), b.double()).pow(2)
            s += torch.exp(-gamma * d).sum().item()
        if same:
            s -= len(a)  # the diagonal, k(x, x) = 1
        return s

    m, n = len(x), len(y)
    return (
        ksum(x, x, True) / (m * (m - 1))
        + ksum(y, y, True) / (n * (n - 1))
        - 2 * ksum(x, y, False) / (m * n)
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--particles", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x_all = gmm_data(gen)
    m_total, n, dz = len(x_all), args.particles, 2
    big_k = 1000
    betas = torch.linspace(1e-4, 0.02, big_k, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    sqrt_ab, sqrt_1mab = abar.sqrt().float(), (1 - abar).sqrt().float()
    prior_w = 0.5 * abar[-1].item()

    eps_net = Eps()
    dec = nn.Linear(dz, x_all.shape[1], bias=False)
    opt = torch.optim.AdamW(
        list(eps_net.parameters()) + list(dec.parameters()), lr=1e-3, weight_decay=0.01
    )
    z = torch.randn(m_total, n, dz)
    m1 = torch.zeros_like(z)
    m2 = torch.zeros_like(z)
    a_mom, b_mom, eps_pc, h = 0.9, 0.999, 1e-8, 0.1
    per_epoch = m_total // args.batch
    warmup, c_kl = 1000, 0.01

    start = time.perf_counter()
    for t in range(args.steps):
        epoch, pos = divmod(t, per_epoch)
        if pos == 0:
            perm = torch.randperm(m_total, generator=gen)
        idx = perm[pos * args.batch : (pos + 1) * args.batch]
        gamma = c_kl * min(t / warmup, 1.0)
        zb = z[idx].reshape(-1, dz).requires_grad_(True)
        xb = x_all[idx].repeat_interleave(n, 0)
        k = torch.randint(1, big_k + 1, (len(zb),))
        e = torch.randn_like(zb)
        zk = sqrt_ab[k - 1, None] * zb + sqrt_1mab[k - 1, None] * e
        diff = (e - eps_net(zk, k)).pow(2).sum(1) + prior_w * zb.pow(2).sum(1)
        nll = 0.5 * (xb - dec(zb)).pow(2).sum(1)
        loss = (gamma * diff + nll).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g = (m_total * n) * zb.grad.reshape(-1, n, dz)
            m1[idx] = a_mom * m1[idx] + (1 - a_mom) * g
            m2[idx] = b_mom * m2[idx] + (1 - b_mom) * g * g
            z[idx] -= h * m1[idx] / (m2[idx] + eps_pc).sqrt()
            sd = math.sqrt(2 * h * gamma / m_total) / args.batch
            noise = torch.randn_like(z) * sd
            if epoch >= 1:
                noise *= (m2 + eps_pc).pow(-0.25)
            z += noise
        opt.step()
    train_s = time.perf_counter() - start

    with torch.no_grad():
        zs = torch.randn(args.samples, dz)
        for kk in range(big_k, 0, -1):
            kt = torch.full((args.samples,), kk)
            beta, ab = betas[kk - 1].item(), abar[kk - 1].item()
            mean = (zs - beta / math.sqrt(1 - ab) * eps_net(zs, kt)) / math.sqrt(1 - beta)
            zs = mean + (math.sqrt(beta) * torch.randn_like(zs) if kk > 1 else 0.0)
        xs = dec(zs)
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "particles": n,
                "steps": args.steps,
                "steps_per_second": args.steps / train_s,
                "final_loss": loss.item(),
                "mmd": mmd2(xs, x_all[: args.samples]),
            }
        )
    )


if __name__ == "__main__":
    main()
