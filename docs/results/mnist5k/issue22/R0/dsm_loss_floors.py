# Where the prior's refit loss sits: the DSM loss (sum over dims, k uniform on 1..K) of
# (a) the exact empirical-mixture denoiser (memorising the cloud), (b) the best Gaussian model.
# Usage: python3 dsm_loss_floors.py RUN/checkpoints/step-00001200.safetensors (numpy, safetensors).
# It also prints a "leave-own-point-out" loss, which is not meaningful at small noise (not used).
import sys, numpy as np
from safetensors.numpy import load_file
d = load_file(sys.argv[1]); z = d['particles/z'].astype(np.float64)
M, N, D = z.shape; Z = z.reshape(M*N, D)
s = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
Z = Z / s
K = 1000; beta = np.linspace(1e-4, 0.02, K); ab = np.cumprod(1 - beta)
mu = Z.mean(0); C = np.cov(Z.T); lam = np.linalg.eigvalsh(C)
print("rms %.3f  mean-norm %.3f  coord std min/median/max %.3f %.3f %.3f" % (np.sqrt((Z**2).mean()), np.linalg.norm(mu), Z.std(0).min(), np.median(Z.std(0)), Z.std(0).max()))
print("cov eigen: top5", np.round(lam[::-1][:5],2), " #eig>1: %d  >0.1: %d  sum %.1f" % ((lam>1).sum(), (lam>0.1).sum(), lam.sum()))
g = np.mean([np.sum(a*lam/(a*lam+1-a)) for a in ab])
print("Gaussian-optimal DSM loss: %.2f" % g)
rng = np.random.default_rng(0); S = 3000
idx = rng.integers(0, M*N, S); ks = rng.integers(0, K, S); eps = rng.standard_normal((S, D))
tot = 0.0; loo = 0.0
Z2 = (Z**2).sum(1)
for i in range(S):
    a = ab[ks[i]]; x = np.sqrt(a)*Z[idx[i]] + np.sqrt(1-a)*eps[i]
    d2 = Z2*a - 2*np.sqrt(a)*(Z@x) + (x@x)
    for which in (0, 1):
        l = -d2/(2*(1-a))
        if which == 1:  # leave the point's own particles out
            m = idx[i]//N; l[m*N:(m+1)*N] = -np.inf
        w = np.exp(l - l.max()); w /= w.sum()
        e = (x - np.sqrt(a)*(w@Z))/np.sqrt(1-a)
        v = ((eps[i]-e)**2).sum()
        if which == 0: tot += v
        else: loo += v
print("empirical-optimal (memorising) DSM loss: %.2f   leave-own-point-out: %.2f" % (tot/S, loo/S))
