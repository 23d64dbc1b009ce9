"""Compute precision of the codec: speed and error of bf16 autocast against fp32, per preset.

Usage (from the checkout root):
    /work/main/.venv/bin/python bench/precision.py [--presets tiny full] [--seconds 9.75] [--runs 3] [--threads 2]

Encodes and decodes `--seconds` of noise-like stereo audio with `encode_audio` / `decode_latents` (chunked, default
chunk and overlap) under each precision (`lyracodec.codec.compute_dtype`: fp32 = no autocast, bf16 = autocast to
bfloat16). Prints the median wall time of `--runs` runs after a warm-up, the real-time factor, and the relative error
against fp32: ||z_bf16 - z_fp32|| / ||z_fp32|| for the latents, the same for the decoded audio (both decoded from the
fp32 latents, so the decoder's own error is shown). Random weights: speed does not depend on them; the error of a
trained model is of the same order (the activations are what bf16 rounds).
"""
import argparse, statistics, time
import torch

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--presets', nargs='+', default=['tiny', 'full'])
    p.add_argument('--seconds', type=float, default=9.75)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.codec import encode_audio, decode_latents, compute_dtype
    dev = torch.device(a.device)
    print(f"device {dev}, {a.threads} threads, {a.seconds} s stereo; "
          f'auto -> {compute_dtype("auto", dev)}')
    print(f'{"preset":6s} {"prec":5s} {"encode s":>9s} {"decode s":>9s} {"x real time":>11s} {"latent rel.err":>15s} {"audio rel.err":>14s}')
    for preset in a.presets:
        torch.manual_seed(0)
        model = VAE(VAEConfig.preset(preset)).to(dev).eval().fold_weight_norm()
        x = 0.3 * torch.randn(1, 2, int(a.seconds * model.sample_rate), device=dev)
        ref_z = ref_y = None
        for prec in ('fp32', 'bf16'):
            dt = compute_dtype(prec, dev)
            encode_audio(model, x[..., :model.sample_rate], dtype=dt)  # warm-up
            te, td = [], []
            for _ in range(a.runs):
                t = time.perf_counter(); z = encode_audio(model, x, dtype=dt); te.append(time.perf_counter() - t)
                zin = ref_z if ref_z is not None else z
                t = time.perf_counter(); y = decode_latents(model, zin, x.shape[-1], dtype=dt); td.append(time.perf_counter() - t)
            if ref_z is None: ref_z, ref_y, ez, ey = z, y, 0.0, 0.0
            else: ez, ey = float((z - ref_z).norm() / ref_z.norm()), float((y - ref_y).norm() / ref_y.norm())
            e, d = statistics.median(te), statistics.median(td)
            print(f'{preset:6s} {prec:5s} {e:9.2f} {d:9.2f} {a.seconds / (e + d):11.1f} {ez:15.2e} {ey:14.2e}', flush=True)

if __name__ == '__main__': main()
