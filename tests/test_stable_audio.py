"""Stable Audio Open checkpoints: synthetic checkpoints in the stable-audio-tools layout, every prefix and wrapper,
outputs against a functional reference written from the published formulas, strict errors, and the CLI."""
import argparse, json, math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from helpers import run_cli
from lyracodec.vae import VAE, VAEConfig
from lyracodec.stable_audio import (load_stable_audio_state, stable_audio_shapes, infer_config, matching_preset,
                                    StableAudioError, PREFIXES)

# Reduced width, same structure as Stable Audio Open (channels 128, c_mults [1,2,4,8,16], strides [2,4,4,8,8], latent 64)
CH, MULTS, STRIDES, LATENT, IO = 4, (1, 2, 4, 8, 16), (2, 4, 4, 8, 8), 16, 2
HOP = math.prod(STRIDES)

# ---- the stable-audio-tools layout, written from its structure (independent of lyracodec) ----
def sao_shapes(channels=CH, c_mults=MULTS, strides=STRIDES, latent=LATENT, io=IO) -> dict:
    "Key -> shape of an Oobleck autoencoder (use_snake, old-style weight norm) in stable-audio-tools' naming."
    sh = {}
    def conv(p, cout, cin, k, bias=True, transpose=False):
        sh[p + '.weight_g'] = ((cin if transpose else cout), 1, 1)   # weight_norm dim 0
        sh[p + '.weight_v'] = (cin, cout, k) if transpose else (cout, cin, k)
        if bias: sh[p + '.bias'] = (cout,)
    def snake(p, c): sh[p + '.alpha'] = (c,); sh[p + '.beta'] = (c,)
    def res(p, c):
        snake(p + '.layers.0', c); conv(p + '.layers.1', c, c, 7); snake(p + '.layers.2', c); conv(p + '.layers.3', c, c, 1)
    w = [channels * m for m in (1,) + tuple(c_mults)]
    n = len(strides)
    conv('encoder.layers.0', w[0], io, 7)
    for i, s in enumerate(strides):
        p = f'encoder.layers.{i + 1}'
        for j in range(3): res(f'{p}.layers.{j}', w[i])
        snake(f'{p}.layers.3', w[i]); conv(f'{p}.layers.4', w[i + 1], w[i], 2 * s)
    snake(f'encoder.layers.{n + 1}', w[-1]); conv(f'encoder.layers.{n + 2}', 2 * latent, w[-1], 3)
    conv('decoder.layers.0', w[-1], latent, 7)
    for i, s in enumerate(reversed(strides)):
        cin, cout, p = w[n - i], w[n - i - 1], f'decoder.layers.{i + 1}'
        snake(f'{p}.layers.0', cin); conv(f'{p}.layers.1', cout, cin, 2 * s, transpose=True)
        for j in range(3): res(f'{p}.layers.{j + 2}', cout)
    snake(f'decoder.layers.{n + 1}', w[0]); conv(f'decoder.layers.{n + 2}', io, w[0], 7, bias=False)
    return sh

def sao_random(seed=0, **kw) -> dict:
    g = torch.Generator().manual_seed(seed)
    def make(k, s):
        if k.endswith('weight_g'): return 0.4 + 0.4 * torch.rand(s, generator=g)
        if k.endswith(('alpha', 'beta')): return 0.3 * torch.randn(s, generator=g)
        return (0.1 if k.endswith('bias') else 1.0) * torch.randn(s, generator=g)
    return {k: make(k, s) for k, s in sao_shapes(**kw).items()}

# ---- the published formulas, functionally, in float64 ----
def wn(sd, p):  # weight = g * v / ||v||, the norm over every axis but 0
    v = sd[p + '.weight_v'].double()
    return sd[p + '.weight_g'].double() * v / v.flatten(1).norm(dim=1)[:, None, None]

def snake(x, sd, p):  # Snake-beta with log-scale parameters: x + 1/(exp(b) + 1e-9) sin^2(exp(a) x)
    a, b = sd[p + '.alpha'].double()[:, None], sd[p + '.beta'].double()[:, None]
    return x + 1.0 / (torch.exp(b) + 1e-9) * torch.sin(torch.exp(a) * x) ** 2

def conv(x, sd, p, **kw):
    b = sd.get(p + '.bias')
    return F.conv1d(x, wn(sd, p), None if b is None else b.double(), **kw)

def res(x, sd, p, d):
    y = conv(snake(x, sd, p + '.layers.0'), sd, p + '.layers.1', dilation=d, padding=3 * d)
    return x + conv(snake(y, sd, p + '.layers.2'), sd, p + '.layers.3')

def ref_encode(x, sd, strides=STRIDES):  # -> (mean, std), softplus std + 1e-4
    h = conv(x.double(), sd, 'encoder.layers.0', padding=3)
    for i, s in enumerate(strides, 1):
        for j, d in enumerate((1, 3, 9)): h = res(h, sd, f'encoder.layers.{i}.layers.{j}', d)
        h = conv(snake(h, sd, f'encoder.layers.{i}.layers.3'), sd, f'encoder.layers.{i}.layers.4', stride=s, padding=math.ceil(s / 2))
    n = len(strides)
    h = conv(snake(h, sd, f'encoder.layers.{n + 1}'), sd, f'encoder.layers.{n + 2}', padding=1)
    mean, scale = h.chunk(2, dim=1)
    return mean, F.softplus(scale) + 1e-4

def ref_decode(z, sd, strides=STRIDES):
    h = conv(z.double(), sd, 'decoder.layers.0', padding=3)
    for i, s in enumerate(reversed(strides), 1):
        p = f'decoder.layers.{i}'
        h = F.conv_transpose1d(snake(h, sd, p + '.layers.0'), wn(sd, p + '.layers.1'), sd[p + '.layers.1.bias'].double(),
                               stride=s, padding=math.ceil(s / 2))
        for j, d in enumerate((1, 3, 9)): h = res(h, sd, f'{p}.layers.{j + 2}', d)
    n = len(strides)
    return conv(snake(h, sd, f'decoder.layers.{n + 1}'), sd, f'decoder.layers.{n + 2}', padding=3)

# ---- fixtures ----
@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Tiny convolutions: one thread is faster than two on the shared 2-core machine (restored afterwards)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

ONE_THREAD = {'OMP_NUM_THREADS': '1'}

@pytest.fixture(scope='module')
def sd(): return sao_random(seed=0)

@pytest.fixture(scope='module')
def io():
    g = torch.Generator().manual_seed(1)
    return 0.5 * torch.randn(2, IO, 3 * HOP, generator=g), torch.randn(2, LATENT, 3, generator=g)  # audio, latent

@pytest.fixture(scope='module')
def ref(sd, io):
    x, z = io
    mean, std = ref_encode(x, sd)
    return mean, std, ref_decode(z, sd)

def check_outputs(model, io, ref, tol=1e-5):
    x, z = io
    mean, std, y = ref
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        assert torch.equal(model.encode(x), mu)  # deterministic encoding = posterior mean
        assert (mu.double() - mean).abs().max() <= tol
        assert ((0.5 * logvar).exp().double() - std).abs().max() <= tol
        assert (model.decode(z).double() - y).abs().max() <= tol

def write(path: Path, state: dict, wrap: bool=False) -> Path:
    if path.suffix == '.safetensors': save_file(state, str(path))
    else: torch.save({'state_dict': state, 'epoch': 3, 'global_step': 1200} if wrap else state, path)
    return path

# ---- loading: every prefix, wrapper and format ----
CASES = [('.safetensors', p, False) for p in PREFIXES] + [(ext, p, w) for ext in ('.ckpt', '.pt') for p in PREFIXES
                                                           for w in (True, False)]

@pytest.mark.parametrize('ext,prefix,wrap', CASES)
def test_every_prefix_and_wrapper_matches_reference(tmp_path, sd, io, ref, ext, prefix, wrap):
    f = write(tmp_path / f'model{ext}', {prefix + k: v for k, v in sd.items()}, wrap)
    cfg, state, found = load_stable_audio_state(f)
    assert found == prefix
    assert (cfg.channels, cfg.c_mults, cfg.strides, cfg.latent_dim, cfg.in_channels, cfg.bottleneck) == \
           (CH, list(MULTS), list(STRIDES), LATENT, IO, 'softplus')
    assert len(state) == len(sd) and all(v.dtype == torch.float32 for v in state.values())
    check_outputs(VAE.from_stable_audio(f), io, ref)

def test_full_sao_checkpoint_ignores_the_diffusion_model(tmp_path, sd, io, ref):
    extra = {'model.model.transformer.layers.0.self_attn.to_qkv.weight': torch.randn(6, 2),
             'conditioner.conditioners.prompt.proj_out.weight': torch.randn(3, 3)}
    f = write(tmp_path / 'model.safetensors', extra | {'pretransform.model.' + k: v for k, v in sd.items()})
    check_outputs(VAE.from_stable_audio(f), io, ref)

def test_training_checkpoint_prefers_ema_weights(tmp_path, sd, io, ref):
    other = sao_random(seed=7)
    state = {'autoencoder.' + k: v for k, v in other.items()} | {'autoencoder_ema.ema_model.' + k: v for k, v in sd.items()}
    state |= {'autoencoder_ema.step': torch.tensor(5), 'discriminator.convs.0.weight': torch.randn(2, 2, 3)}
    f = write(tmp_path / 'train.ckpt', state, wrap=True)
    assert load_stable_audio_state(f).prefix == 'autoencoder_ema.ema_model.'
    check_outputs(VAE.from_stable_audio(f), io, ref)

def test_half_precision_and_new_style_weight_norm_names(tmp_path, sd, io, ref):
    new = {k.replace('.weight_g', '.parametrizations.weight.original0').replace('.weight_v', '.parametrizations.weight.original1'): v
           for k, v in sd.items()}
    check_outputs(VAE.from_stable_audio(write(tmp_path / 'new.safetensors', new)), io, ref)
    half = {k: v.half() for k, v in sd.items()}
    model = VAE.from_stable_audio(write(tmp_path / 'half.safetensors', half))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    check_outputs(model, io, ref_of(half, io), tol=1e-5)

def ref_of(state, io):
    x, z = io
    mean, std = ref_encode(x, state)
    return mean, std, ref_decode(z, state)

def test_sampling_is_mean_plus_noise_times_softplus_std(tmp_path, sd, io, ref):
    model = VAE.from_stable_audio(write(tmp_path / 'm.safetensors', sd))
    x, _ = io
    mean, std, _ = ref
    with torch.no_grad():
        torch.manual_seed(3); z = model.encode(x, sample=True)
    torch.manual_seed(3); eps = torch.randn(mean.shape)
    assert (z.double() - (mean + eps.double() * std)).abs().max() <= 1e-5
    assert not torch.equal(z, model.encode(x).detach())

def test_lengths_not_multiple_of_hop_match_zero_padded_reference(tmp_path, sd):
    model = VAE.from_stable_audio(write(tmp_path / 'm.safetensors', sd))
    x = 0.5 * torch.randn(1, IO, 2 * HOP + 100)
    mean, _ = ref_encode(F.pad(x, (0, HOP - 100)), sd)  # stable-audio-tools pads with silence to a multiple of the hop
    with torch.no_grad(): assert (model.encode(x).double() - mean).abs().max() <= 1e-5

# ---- shapes: the full Stable Audio Open model ----
def test_full_shapes_give_the_full_preset_and_its_parameter_count():
    full = sao_shapes(channels=128, latent=64)
    assert sum(math.prod(s) for s in full.values()) == 156_112_514
    assert stable_audio_shapes(VAEConfig.preset('full', bottleneck='softplus')) == full
    cfg = infer_config({k: torch.empty(s, device='meta') for k, s in full.items()})
    assert matching_preset(cfg) == 'full' and cfg.bottleneck == 'softplus'

# ---- strict errors, each naming the file and the keys ----
def test_missing_key_is_named(tmp_path, sd):
    bad = dict(sd); bad.pop('encoder.layers.3.layers.1.layers.3.bias')
    with pytest.raises(StableAudioError, match=r"missing.ckpt.*missing 1 key.*'encoder\.layers\.3\.layers\.1\.layers\.3\.bias'"):
        VAE.from_stable_audio(write(tmp_path / 'missing.ckpt', bad, wrap=True))

def test_missing_shape_defining_key_is_named(tmp_path, sd):
    bad = dict(sd); bad.pop('encoder.layers.2.layers.4.weight_v')
    with pytest.raises(StableAudioError, match=r"m.safetensors: missing key 'encoder\.layers\.2\.layers\.4\.weight_v'"):
        load_stable_audio_state(write(tmp_path / 'm.safetensors', bad))

def test_unexpected_key_is_named(tmp_path, sd):
    for prefix in ('pretransform.model.', ''):
        f = write(tmp_path / 'extra.safetensors', {prefix + k: v for k, v in (sd | {'decoder.layers.2.gain': torch.ones(1)}).items()})
        with pytest.raises(StableAudioError, match=r"extra.safetensors.*unexpected 1 key.*'decoder\.layers\.2\.gain'"):
            load_stable_audio_state(f)
    f = write(tmp_path / 'top.safetensors', sd | {'discriminator.w': torch.ones(1)})  # top level: every tensor must be used
    with pytest.raises(StableAudioError, match=r"unexpected 1 key.*'discriminator\.w'"):
        load_stable_audio_state(f)

def test_shape_mismatch_is_named(tmp_path, sd):
    bad = sd | {'decoder.layers.2.layers.3.layers.1.weight_v': torch.randn(16, 16, 5)}
    with pytest.raises(StableAudioError, match=r"decoder\.layers\.2\.layers\.3\.layers\.1\.weight_v is \(16, 16, 5\), expected \(16, 16, 7\)"):
        load_stable_audio_state(write(tmp_path / 'shape.safetensors', bad))

@pytest.mark.parametrize('ext', ['.safetensors', '.ckpt'])
def test_diffusion_only_file_is_a_clear_error(tmp_path, ext):
    dit = {'model.model.transformer.layers.0.self_attn.to_qkv.weight': torch.randn(6, 2),
           'model.model.to_timestep_embed.0.weight': torch.randn(2, 2),
           'conditioner.conditioners.seconds_total.embedder.embedding.1.weight': torch.randn(2, 2)}
    f = write(tmp_path / f'dit{ext}', dit, wrap=ext == '.ckpt')
    with pytest.raises(StableAudioError, match=r"dit.*no Stable Audio autoencoder found.*'model\.' \(2\).*diffusion model"):
        load_stable_audio_state(f)

def test_checkpoint_needing_unpickling_is_refused(tmp_path, sd):
    f = tmp_path / 'lightning.ckpt'
    torch.save({'state_dict': sd, 'hyper_parameters': argparse.Namespace(lr=1.5e-4)}, f)
    with pytest.raises(StableAudioError, match=r"lightning.ckpt: refused.*arbitrary unpickling.*argparse\.Namespace"):
        load_stable_audio_state(f)

@pytest.mark.parametrize('name,content,msg', [
    ('garbage.ckpt', b'not a checkpoint at all', 'not a readable PyTorch checkpoint'),
    ('garbage.safetensors', b'\x00' * 64, 'not a readable safetensors file'),
    ('weights.npz', b'x', "unknown checkpoint type '.npz'"),
])
def test_unreadable_files(tmp_path, name, content, msg):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StableAudioError, match=name.replace('.', r'\.') + '.*' + msg.replace('.', r'\.').replace('(', r'\(')):
        load_stable_audio_state(tmp_path / name)

def test_other_variants_are_refused(tmp_path, sd):
    elu = {k: v for k, v in sd.items() if not k.endswith(('.alpha', '.beta'))}
    with pytest.raises(StableAudioError, match='ELU'):
        load_stable_audio_state(write(tmp_path / 'elu.safetensors', elu))
    odd = sao_random(strides=(2, 4, 4, 8, 3))
    with pytest.raises(StableAudioError, match=r'stride of 3.*even strides'):
        load_stable_audio_state(write(tmp_path / 'odd.safetensors', odd))
    with pytest.raises(StableAudioError, match=r"not the 'full' preset: channels is 4"):
        load_stable_audio_state(write(tmp_path / 'm.safetensors', sd), preset='full')

# ---- the console script ----
def test_cli_end_to_end(tmp_path, sd, io, ref):
    src = write(tmp_path / 'model.safetensors', {'pretransform.model.' + k: v for k, v in sd.items()})
    out = tmp_path / 'models' / 'sao-vae'
    r = run_cli('lyracodec_convert', '--from-stable-audio', src, out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "under 'pretransform.model.'" in r.stdout and 'wrote' in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    assert json.loads((out / 'config.json').read_text())['config']['bottleneck'] == 'softplus'
    check_outputs(VAE.from_pretrained(out), io, ref)
    assert [p.name for p in out.parent.iterdir()] == ['sao-vae']  # no temporary folder left
    r = run_cli('lyracodec_convert', '--from-stable-audio', src, out, env=ONE_THREAD)  # existing folder: refused, untouched
    assert r.returncode != 0 and 'not empty' in r.stderr and str(out) in r.stderr
    r = run_cli('lyracodec_convert', '--from-stable-audio', src, out, '--overwrite', env=ONE_THREAD)
    assert r.returncode == 0, r.stderr

def test_cli_bad_inputs_leave_no_output(tmp_path, sd):
    pickled = tmp_path / 'pickled.ckpt'
    torch.save({'state_dict': sd, 'hp': argparse.Namespace(a=1)}, pickled)
    bad = dict(sd); bad.pop('decoder.layers.0.bias')
    cases = [(pickled, 'arbitrary unpickling'), (write(tmp_path / 'bad.safetensors', bad), 'missing 1 key'),
             (tmp_path / 'absent.safetensors', 'no such file')]
    for src, msg in cases:
        out = tmp_path / 'out' / src.stem
        r = run_cli('lyracodec_convert', '--from-stable-audio', src, out, env=ONE_THREAD)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(src) in lines[0] and msg in lines[0], r.stderr
        assert not out.exists() and not (tmp_path / 'out').exists()
    r = run_cli('lyracodec_convert', '--from-stable-audio', write(tmp_path / 'ok.safetensors', sd), tmp_path / 'o', '--preset', 'full', env=ONE_THREAD)
    assert r.returncode != 0 and "not the 'full' preset" in r.stderr and not (tmp_path / 'o').exists()
