"""The discriminator of a stable-audio-tools training checkpoint, against the real package: stable-audio-tools
0.0.19's `models/encodec.py` (its EncodecDiscriminator's MultiScaleSTFTDiscriminator), downloaded from the package
index with einops (no other dependency is needed to run that module), is loaded into ours and gives the same logits
and feature maps; a fine-tune from such a checkpoint loads it instead of warming up a fresh one."""
import importlib.util, os, subprocess, sys, zipfile
from pathlib import Path

import pytest
import torch

from lyracodec import trainer as T
from lyracodec.finetune import read_init
from lyracodec.losses import MultiScaleSTFTDiscriminator
from lyracodec.stable_audio import DISC_PREFIX
from test_finetune import corpus, ft_cfg  # noqa: F401 (fixture)
from test_stable_audio import sao_random, write

SAT = 'stable-audio-tools==0.0.19'
FFTS = (512, 256, 128)

@pytest.fixture(scope='module')
def sat_encodec(tmp_path_factory):
    "stable-audio-tools' encodec module, imported from the downloaded wheel (CI fails without it; elsewhere: skip)."
    d = tmp_path_factory.mktemp('sat')
    r = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '-q', '-d', str(d), SAT, 'einops'],
                       capture_output=True, text=True, timeout=600)
    wheels = {w.name.split('-')[0]: w for w in d.glob('*.whl')}
    if r.returncode != 0 or set(wheels) != {'stable_audio_tools', 'einops'}:
        msg = f'could not download {SAT} and einops from the package index: {r.stderr.strip()[-300:]}'
        if os.environ.get('CI'): pytest.fail(msg)
        pytest.skip(msg)
    with zipfile.ZipFile(wheels['stable_audio_tools']) as z: z.extract('stable_audio_tools/models/encodec.py', d)
    sys.path.insert(0, str(wheels['einops']))  # a pure-Python wheel imports from the zip
    spec = importlib.util.spec_from_file_location('sat_encodec', d / 'stable_audio_tools' / 'models' / 'encodec.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def sat_discriminator(mod, filters=8, seed=0):
    "The real module, SAO's configuration at a smaller width, weight-norm gains randomised (not all at their init)."
    torch.manual_seed(seed)
    d = mod.MultiScaleSTFTDiscriminator(filters=filters, in_channels=2, out_channels=1, n_ffts=list(FFTS),
                                        hop_lengths=[n // 4 for n in FFTS], win_lengths=list(FFTS))
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.endswith(('weight_g', 'bias')): p.add_(0.1 * torch.randn_like(p))
    return d.eval()

def training_checkpoint(path: Path, disc) -> Path:
    "A stable-audio-tools training checkpoint: the autoencoder beside `discriminator.` (the EncodecDiscriminator)."
    state = {'autoencoder.' + k: v for k, v in sao_random(seed=3).items()}
    state |= {DISC_PREFIX + k: v.detach().clone() for k, v in disc.state_dict().items()}
    return write(path, state, wrap=True)

def test_real_discriminator_maps_exactly(sat_encodec, tmp_path):
    sat = sat_discriminator(sat_encodec)
    src = read_init(training_checkpoint(tmp_path / 'sat.ckpt', sat))
    assert src.disc_settings == {'disc_ffts': FFTS, 'disc_channels': 8, 'disc_style': 'stable-audio'}
    ours = MultiScaleSTFTDiscriminator(FFTS, 8, 2, 'stable-audio').eval()
    ours.load_state_dict(src.disc)
    x = 0.3 * torch.randn(2, 2, 8192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, fmaps = sat(x)
        mine = ours(x)
    assert len(mine) == len(logits) == len(FFTS)
    for (l, f), l_ref, f_ref in zip(mine, logits, fmaps):
        assert l.shape == l_ref.shape and len(f) == len(f_ref)
        torch.testing.assert_close(l, l_ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(f, f_ref): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the same weights in our own style compute something else: the style is what makes the mapping exact
    own = MultiScaleSTFTDiscriminator(FFTS, 8, 2, 'lyracodec').eval()
    own.load_state_dict(src.disc)
    with torch.no_grad(): assert own(x)[0][0].shape != logits[0].shape

def test_finetune_loads_the_real_discriminator(sat_encodec, corpus, tmp_path, capsys):
    path = training_checkpoint(tmp_path / 'sat.ckpt', sat_discriminator(sat_encodec))
    tr = T.Trainer(ft_cfg(corpus, path, 'run.max_steps=2', 'loss.disc_warmup_steps=5'), tmp_path / 'ft')
    assert (tr.cfg.loss.disc_style, tr.cfg.loss.disc_channels, tuple(tr.cfg.loss.disc_ffts)) == ('stable-audio', 8, FFTS)
    assert tr.disc_warmup == 0  # loaded, not warmed up
    assert 'the discriminator comes with the model' in capsys.readouterr().out
    ref = read_init(path).disc
    assert all(torch.equal(v, ref[k]) for k, v in tr.disc.state_dict().items())
    assert tr.fit() == 0
    assert T.load_config(tmp_path / 'ft' / 'config.yaml').loss.disc_style == 'stable-audio'  # resume rebuilds it so
