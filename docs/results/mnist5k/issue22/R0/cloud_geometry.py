# How learnable the mnist5k particle cloud is, per noise level and per direction.
# (1) Per band of timesteps k: the DSM loss (sum over dims) of the best Gaussian (closed form),
#     of the exact empirical-mixture denoiser (memorising the cloud), and of that denoiser with
#     the point's own particles left out (a kernel density estimate judged on a point it has not
#     seen: what "generalising from the other points" buys).
# (2) Per principal direction of the cloud: its variance against the within-point variance
#     (half the squared difference of a point's two particles, i.e. the posterior noise).
# Usage: python3 cloud_geometry.py RUN/checkpoints/step-00001200.safetensors  (numpy, safetensors)
import sys, numpy as np
from safetensors.numpy import load_file
z = load_file(sys.argv[1])['particles/z'].astype(np.float64)
M, N, D = z.shape; Z = z.reshape(M*N, D)
K = 1000; k1 = np.arange(1, K+1); beta = (1-k1/K)*1e-4 + (k1/K)*0.02; ab = np.cumprod(1 - beta)
C = np.cov(Z.T); lam, U = np.linalg.eigh(C); lam, U = lam[::-1], U[:, ::-1]
rng = np.random.default_rng(0); Z2 = (Z**2).sum(1); S = 300
print("(1) DSM loss per band of k, %d draws each" % S)
print("k band      gaussian  memorise  own-point-out")
for lo, hi in [(1,50),(50,130),(130,250),(250,400),(400,600),(600,800),(800,1000)]:
    g = np.mean([np.sum(a*lam/(a*lam+1-a)) for a in ab[lo-1:hi]])
    idx = rng.integers(0, M*N, S); ks = rng.integers(lo-1, hi, S); eps = rng.standard_normal((S, D))
    mem = loo = 0.0
    for i in range(S):
        a = ab[ks[i]]; x = np.sqrt(a)*Z[idx[i]] + np.sqrt(1-a)*eps[i]
        l = -(Z2*a - 2*np.sqrt(a)*(Z@x) + x@x)/(2*(1-a))
        for own_out in (False, True):
            if own_out:
                m = idx[i]//N; l = l.copy(); l[m*N:(m+1)*N] = -np.inf
            w = np.exp(l - l.max()); w /= w.sum()
            v = ((eps[i] - (x - np.sqrt(a)*(w@Z))/np.sqrt(1-a))**2).sum()
            if own_out: loo += v
            else: mem += v
    print("%4d-%4d  %9.2f %9.2f %14.2f" % (lo, hi, g, mem/S, loo/S), flush=True)
P = z @ U; within = 0.5*((P[:,0,:]-P[:,1,:])**2).mean(0)
print("(2) total variance %.1f over %d directions, within-point %.1f" % (lam.sum(), D, within.sum()))
for q in [0, 1, 4, 16, 32, 64, 100, 150, D-1]:
    print("pc %3d  variance %8.3f  within-point %6.3f  ratio %.3f" % (q, lam[q], within[q], within[q]/lam[q]))
