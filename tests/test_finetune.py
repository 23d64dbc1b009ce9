"Fine-tuning end to end (tiny preset, CPU): every kind of --init source, refusals, freezing, warm-up, exact resume, DDP."
import os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli

from lyracodec import trainer as T
from lyracodec.demo_corpus import make_demo_corpus
from lyracodec.finetune import read_init
from lyracodec.vae import VAE, VAEConfig, save_pretrained, load_pretrained

BASE = ['data.target_length=4096', 'data.valid_length=8192', 'data.batch_size=2', 'data.num_workers=0',
        'data.valid_ratio=0.25', 'logging.logger=none', 'logging.progress=false', 'logging.valid_clips=2',
        'logging.recon_clips=1', 'logging.valid_every=0', 'logging.audio_every=0', 'run.threads=1',
        'loss.disc_ffts=[256,128]', 'schedule.warmup_steps=2', 'checkpoint.export=true', 'run.device=cpu', 'run.amp=none']

@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path: return make_demo_corpus(tmp_path_factory.mktemp('c') / 'demo', minutes=0.5)

@pytest.fixture(scope='module')
def source(corpus, tmp_path_factory) -> Path:
    "A 3-step adversarial run of the tiny preset: its folder holds an export, last.pt (with a discriminator)."
    run = tmp_path_factory.mktemp('src') / 'run'
    tr = T.Trainer(T.load_config('demo', BASE + [f'data.root={corpus}', 'loss.recipe=adversarial', 'run.max_steps=3',
                                                 'checkpoint.every=3']), run)
    assert tr.fit() == 0
    return run

def ft_cfg(corpus, init, *extra):
    cfg = T.load_config('finetune', BASE + [f'data.root={corpus}', 'checkpoint.keep_last=5', *extra])
    cfg.model.init = str(init)
    return cfg

def latents(model: VAE, clips: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(): return model.eval().encode(clips)

def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob('*') if p.is_file()}

@pytest.mark.parametrize('kind', ['model folder', 'run folder', 'LyraCodec checkpoint', 'raw checkpoint'])
def test_init_from_each_lyracodec_source(corpus, source, tmp_path, kind):
    init = {'model folder': source / 'export', 'run folder': source, 'LyraCodec checkpoint': source / 'last.pt',
            'raw checkpoint': source / 'last.pt'}[kind]
    before = snapshot(source)
    extra = ['model.init_weights=raw'] if kind == 'raw checkpoint' else []
    tr = T.Trainer(ft_cfg(corpus, init, 'run.max_steps=1', *extra), tmp_path / 'ft')
    ck = T.load_checkpoint(source / 'last.pt')
    want = ck['model'] if kind == 'raw checkpoint' else ck['ema']['model']
    assert all(torch.equal(v, want[k]) for k, v in tr.model.state_dict().items()), 'weights not those of the source'
    assert tr.step == 0 and tr.cfg.model.init_fingerprint == read_init(init).fingerprint
    loaded_disc = kind in ('LyraCodec checkpoint', 'raw checkpoint')
    if loaded_disc: assert all(torch.equal(v, ck['disc'][k]) for k, v in tr.disc.state_dict().items())
    assert tr.disc_warmup == (0 if loaded_disc else tr.cfg.loss.disc_warmup_steps)
    assert tr.fit() == 0
    saved = T.load_checkpoint(tmp_path / 'ft' / 'last.pt')
    assert saved['init']['fingerprint'] == tr.cfg.model.init_fingerprint and saved['init']['path'] == str(init)
    assert T.load_config(tmp_path / 'ft' / 'config.yaml').model.init_fingerprint == tr.cfg.model.init_fingerprint
    assert snapshot(source) == before, 'the source folder was written'

def test_init_from_stable_audio_checkpoint(corpus, tmp_path):
    """A stable-audio-tools training checkpoint (the SAO tests' synthetic one: 'autoencoder.' prefix, a
    `{'state_dict': ...}` wrapper, discriminator tensors beside it): its autoencoder is what trains."""
    from test_stable_audio import sao_random, write
    state = {'autoencoder.' + k: v for k, v in sao_random(seed=3).items()} | {'discriminator.convs.0.weight': torch.randn(2, 2, 3)}
    path = write(tmp_path / 'sat.ckpt', state, wrap=True)
    tr = T.Trainer(ft_cfg(corpus, path, 'run.max_steps=2'), tmp_path / 'ft')
    assert tr.model.cfg.bottleneck == 'softplus' and tr.cfg.model.overrides['bottleneck'] == 'softplus'
    assert tr.disc_warmup == tr.cfg.loss.disc_warmup_steps  # its discriminator is not ours: a fresh one, warmed up
    x = 0.1 * torch.randn(1, 2, 4096)
    with torch.no_grad(): assert torch.equal(tr.model.eval().encode(x), VAE.from_stable_audio(path).encode(x))
    assert tr.fit() == 0
    assert T.load_checkpoint(tmp_path / 'ft' / 'last.pt')['init']['kind'] == 'Stable Audio checkpoint'

def test_mismatching_config_and_bad_inits_are_refused(corpus, source, tmp_path, capsys):
    with pytest.raises(T.ConfigError, match=r"model.preset 'small': channels is 32, the model has 8"):
        T.Trainer(ft_cfg(corpus, source, 'model.preset=small'), tmp_path / 'a')
    with pytest.raises(T.ConfigError, match=r'model.overrides.latent_dim is 32, the model has 64'):
        T.Trainer(ft_cfg(corpus, source, 'model.overrides={latent_dim: 32}'), tmp_path / 'b')
    with pytest.raises(T.ConfigError, match=r'is the folder of the --init model'):
        T.Trainer(ft_cfg(corpus, source), source / 'ft')
    (tmp_path / 'junk.pt').write_bytes(b'\x80\x04 not really a pickle')
    (tmp_path / 'empty').mkdir()
    import pickle
    (tmp_path / 'obj.ckpt').write_bytes(pickle.dumps({'state_dict': {'x': Path('.')}}))
    torch.save({'state_dict': {'encoder.layers.0.weight': torch.zeros(1)}, 'cfg': Path('x')}, tmp_path / 'pickled.ckpt')
    for bad, why in ((tmp_path / 'missing', 'no such model folder or checkpoint'), (tmp_path / 'junk.pt', 'not a readable'),
                     (tmp_path / 'empty', 'not a LyraCodec model folder'), (tmp_path / 'pickled.ckpt', 'arbitrary unpickling'),
                     (tmp_path / 'obj.ckpt', 'not a readable')):
        sets = [a for o in BASE for a in ('--set', o)]
        assert T.main(['finetune', str(corpus), '--init', str(bad), '--out', str(tmp_path / 'r'), *sets]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and str(bad) in err[0], (bad, err)

def test_freeze_encoder_keeps_latents_and_resumes_exactly(corpus, source, tmp_path, capsys):
    "freeze: encoder: no optimiser state for the encoder, latents bit-identical over steps; 4 straight == 2 + resume 2."
    over = ['model.freeze=encoder', 'run.max_steps=4', 'checkpoint.every=2', 'loss.disc_warmup_steps=1']
    a = T.Trainer(ft_cfg(corpus, source / 'export', *over), tmp_path / 'a')
    opt_params = {id(p) for g in a.opt.param_groups for p in g['params']}
    assert not any(id(p) in opt_params for p in a.model.encoder.parameters())
    assert all(id(p) in opt_params for p in a.model.decoder.parameters())
    assert 'parameters train (model.freeze: encoder)' in capsys.readouterr().out
    assert a.fit() == 0
    out = capsys.readouterr().out
    assert "latents identical to the source's on every validation clip (max |difference| 0)" in out, out
    assert 'mel distance' in out and (tmp_path / 'a' / 'finetune.json').is_file()
    src = load_pretrained(source / 'export')
    assert torch.equal(latents(load_pretrained(tmp_path / 'a' / 'export'), a.valid_clips), latents(src, a.valid_clips))
    assert not any(torch.equal(p, q) for p, q in zip(load_pretrained(tmp_path / 'a' / 'export').decoder.parameters(),
                                                     src.decoder.parameters()) if p.numel() > 8), 'the decoder did not train'
    ck = T.load_checkpoint(tmp_path / 'a' / 'step_0000004.pt')
    assert len(ck['opt']['state']) == len(list(a.model.decoder.parameters()))  # no AdamW state for frozen parameters
    # resume from step 2 with the init model gone
    shutil.copytree(tmp_path / 'a', tmp_path / 'b', ignore=shutil.ignore_patterns('step_0000004.pt', 'last.pt', 'export', 'finetune.json'))
    moved = tmp_path / 'gone'; shutil.copytree(source / 'export', moved)
    cfg = T.load_config('finetune', BASE + [f'data.root={corpus}', 'checkpoint.keep_last=5', *over])  # no init given
    torch.manual_seed(99)
    b = T.Trainer(cfg, tmp_path / 'b', resume=str(tmp_path / 'b' / 'step_0000002.pt'))
    assert b.step == 2 and b.init is None and b.cfg.model.init == str(source / 'export')
    assert b.fit() == 0
    sa, sb = (T.load_checkpoint(p / 'step_0000004.pt') for p in (tmp_path / 'a', tmp_path / 'b'))
    from test_trainer import tensors_equal
    for k in ('model', 'ema', 'disc', 'opt', 'disc_opt', 'sched', 'disc_sched', 'rng', 'step', 'init'):
        assert tensors_equal(sa[k], sb[k], k) == [], f'{k} differs after resume'

def test_disc_warmup_holds_the_generator_still(corpus, source, tmp_path):
    tr = T.Trainer(ft_cfg(corpus, source / 'export', 'run.max_steps=2', 'loss.disc_warmup_steps=2'), tmp_path / 'w')
    assert tr.disc is not None and tr.disc_warmup == 2
    g0 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    d0 = {k: v.clone() for k, v in tr.disc.state_dict().items()}
    assert tr.fit() == 0
    assert all(torch.equal(v, g0[k]) for k, v in tr.model.state_dict().items()), 'the generator moved during the warm-up'
    assert not all(torch.equal(v, d0[k]) for k, v in tr.disc.state_dict().items()), 'the discriminator did not train'
    assert tr.sched.last_epoch == 0 and tr.disc_sched.last_epoch == 2

def test_ddp_with_frozen_encoder(corpus, source, tmp_path):
    script = tmp_path / 'train.py'
    script.write_text('import sys\nfrom lyracodec.trainer import main\nsys.exit(main())\n')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'disabled'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script), 'finetune',
           str(corpus), '--init', str(source / 'export'), '--out', str(tmp_path / 'run'),
           *[a for o in BASE + ['run.max_steps=3', 'model.freeze=encoder', 'loss.disc_warmup_steps=1'] for a in ('--set', o)]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    digests = re.search(r'weight digests of 2 ranks: (\w+) (\w+)', r.stdout)
    assert digests and digests.group(1) == digests.group(2), r.stdout
    assert "latents identical to the source's" in r.stdout

def test_kill_and_resume_keeps_latents(corpus, source, tmp_path):
    "kill -9 in the middle of a freeze: encoder fine-tune, then --resume auto: the exported latents are the source's."
    sets = [a for o in BASE + ['run.max_steps=400', 'checkpoint.every=2', 'model.freeze=encoder'] for a in ('--set', o)]
    cmd = [str(Path(sys.executable).parent / 'lyracodec_train')]
    run = tmp_path / 'run'
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    p = subprocess.Popen(cmd + ['finetune', str(corpus), '--init', str(source / 'export'), '--out', str(run), *sets],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while not list(run.glob('step_0000004.pt')) and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    r = run_cli('lyracodec_train', 'finetune', corpus, '--out', run, '--resume', 'auto',
                *[a for o in BASE + ['run.max_steps=8', 'checkpoint.every=2', 'model.freeze=encoder'] for a in ('--set', o)],
                env={'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'resumed from' in r.stdout and "latents identical to the source's" in r.stdout, r.stdout
