"The trainer end to end: config errors, exact resume, faults, Ctrl-C, atomic checkpoints, DDP, the CLI."
import os, re, shutil, signal, subprocess, sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli

from lyracodec import trainer as T
from lyracodec.demo_corpus import make_demo_corpus

# a tiny, fast run: tiny preset, 4096-sample crops, two validation clips, no logger, one thread
BASE = ['data.target_length=4096', 'data.valid_length=8192', 'data.batch_size=2', 'data.num_workers=0',
        'data.valid_ratio=0.25', 'logging.logger=none', 'logging.progress=false', 'logging.valid_clips=2',
        'logging.recon_clips=1', 'logging.valid_every=0', 'logging.audio_every=0', 'run.threads=1',
        'loss.disc_ffts=[256,128]', 'schedule.warmup_steps=2', 'checkpoint.export=false']

@pytest.fixture(scope='session')
def cache(tmp_path_factory) -> Path:
    "A LYRACODEC_CACHE holding the (default, 2-minute) demo corpus, built once."
    c = tmp_path_factory.mktemp('cache')
    make_demo_corpus(c / 'demo')
    return c

@pytest.fixture
def corpus(cache) -> Path: return cache / 'demo'

def cfg_of(corpus, *extra):
    return T.load_config('demo', BASE + [f'data.root={corpus}', *extra])

def tensors_equal(a, b, path='') -> list:
    "Paths where two nested checkpoint trees differ (empty = identical, bit for bit)."
    if isinstance(a, torch.Tensor): return [] if torch.equal(a, b) else [path]
    if isinstance(a, dict): return [d for k in a for d in tensors_equal(a[k], b[k], f'{path}.{k}')]
    if isinstance(a, (list, tuple)): return [d for i, (x, y) in enumerate(zip(a, b)) for d in tensors_equal(x, y, f'{path}[{i}]')]
    return [] if a == b or (a != a and b != b) else [path]

def test_config_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(T.ConfigError, match=r'optim\.lrr'): T.load_config('demo', ['optim.lrr=1'])
    with pytest.raises(T.ConfigError, match=r'optim\.lr'): T.load_config('demo', ['optim.lr=-3'])
    with pytest.raises(T.ConfigError, match=r'data\.batch_size'): T.load_config('demo', ['data.batch_size=two'])
    with pytest.raises(T.ConfigError, match=r'loss\.gan_loss'): T.load_config('demo', ['loss.gan_loss=wasserstein'])
    with pytest.raises(T.ConfigError, match=r'run\.amp'): T.load_config('demo', ['run.amp=fp8'])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model:\n  preset: tiny\nschedule:\n  kind: cosine\n  warmup: 10\n')
    with pytest.raises(T.ConfigError, match=r'schedule\.warmup'): T.load_config(bad)
    assert T.main([str(bad), str(tmp_path)]) == 2
    assert 'schedule.warmup' in capsys.readouterr().err
    assert T.main(['demo', str(tmp_path), '--set', 'ema.decay=1.5']) == 2
    assert 'ema.decay' in capsys.readouterr().err

def test_exact_resume(corpus, tmp_path):
    "4 steps straight == 2 steps, then a fresh process-like Trainer resumed from the step-2 checkpoint, then 2 more."
    over = ['loss.recipe=adversarial', 'loss.adv_start_step=1', 'run.max_steps=4', 'checkpoint.every=2', 'checkpoint.keep_last=5']
    a = T.Trainer(cfg_of(corpus, *over), tmp_path / 'a')
    assert a.fit() == 0
    shutil.copytree(tmp_path / 'a', tmp_path / 'b', ignore=shutil.ignore_patterns('step_0000004.pt', 'last.pt', 'best'))
    torch.manual_seed(1234)  # a resumed run must not depend on the state it starts in
    b = T.Trainer(cfg_of(corpus, *over), tmp_path / 'b', resume=str(tmp_path / 'b' / 'step_0000002.pt'))
    assert b.step == 2
    assert b.fit() == 0
    sa, sb = (T.load_checkpoint(p / 'step_0000004.pt') for p in (tmp_path / 'a', tmp_path / 'b'))
    for k in ('model', 'ema', 'disc', 'opt', 'disc_opt', 'sched', 'scaler', 'rng', 'step', 'epoch', 'position'):
        assert tensors_equal(sa[k], sb[k], k) == [], f'{k} differs after resume'
    assert sa['disc'] is not None and sa['step'] == 4

def test_nan_skips_counts_and_stops(corpus, tmp_path, capsys):
    tr = T.Trainer(cfg_of(corpus, 'run.max_steps=10', 'run.max_bad_steps=2', 'checkpoint.every=1', 'checkpoint.keep_last=5'),
                   tmp_path / 'run')
    orig = tr.loss_fn.forward
    def poisoned(x, y, *a):
        total, logs = orig(x, y, *a)
        return (total * float('nan') if tr.step >= 1 else total), logs
    tr.loss_fn.forward = poisoned
    assert tr.fit() == 3
    err = capsys.readouterr().err
    assert 'non-finite' in err and '--resume' in err
    good, last = T.load_checkpoint(tmp_path / 'run' / 'step_0000001.pt'), T.load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert (last['step'], last['skipped'], last['bad_in_row']) == (3, 2, 2)
    assert tensors_equal(good['model'], last['model']) == [], 'skipped steps must not change the weights'
    assert all(torch.isfinite(v).all() for v in last['model'].values())

@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and what job schedulers send
def test_signal_saves_checkpoint(corpus, tmp_path, sig):
    before = signal.getsignal(sig)  # SIGINT is SIG_IGN when the suite runs in the background (nohup ... &)
    tr = T.Trainer(cfg_of(corpus, 'run.max_steps=50', 'checkpoint.every=100'), tmp_path / 'run')
    orig = tr.train_step
    def step_then_signal(batches):
        out = orig(batches)
        if tr.step == 2: os.kill(os.getpid(), sig)
        return out
    tr.train_step = step_then_signal
    assert tr.fit() == 130
    assert T.load_checkpoint(tmp_path / 'run' / 'last.pt')['step'] == 2
    assert signal.getsignal(sig) is before  # handler restored

def test_checkpoint_write_is_atomic(corpus, tmp_path, monkeypatch):
    tr = T.Trainer(cfg_of(corpus, 'run.max_steps=2', 'checkpoint.every=100'), tmp_path / 'run')
    assert tr.fit() == 0  # saves step 2
    real_save, real_replace = torch.save, os.replace
    def killed_save(obj, f, *a, **k):  # half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        with open(f, 'r+b') as fh: fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt('killed mid-write')
    tr.step = 3
    monkeypatch.setattr(torch, 'save', killed_save)
    with pytest.raises(KeyboardInterrupt): tr.save()
    monkeypatch.setattr(torch, 'save', real_save)
    def killed_replace(src, dst):  # the process "dies" while last.pt is being pointed at the new step file
        if Path(dst).name == 'last.pt': raise KeyboardInterrupt('killed while updating last.pt')
        real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', killed_replace)
    with pytest.raises(KeyboardInterrupt): tr.save()
    assert T.load_checkpoint(tmp_path / 'run' / 'last.pt')['step'] == 2
    assert not list((tmp_path / 'run').glob('.*.tmp')), 'temporary files left behind'
    with pytest.raises(ValueError, match='step_0000003.pt|last.pt|not a'):
        (tmp_path / 'run' / 'broken.pt').write_bytes(b'not a checkpoint'); T.load_checkpoint(tmp_path / 'run' / 'broken.pt')

def test_ddp_two_processes_equal_weights(corpus, tmp_path):
    script = tmp_path / 'train.py'
    script.write_text('import sys\nfrom lyracodec.trainer import main\nsys.exit(main())\n')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'disabled'}
    def launch(*extra):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script), 'demo',
               str(corpus), '--out', str(tmp_path / 'run'), *[a for o in BASE for a in ('--set', o)], *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    r = launch('--set', 'run.max_steps=3', '--set', 'optim.accum_steps=2')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    digests = re.search(r'weight digests of 2 ranks: (\w+) (\w+)', r.stdout)
    assert digests and digests.group(1) == digests.group(2), r.stdout
    assert T.load_checkpoint(tmp_path / 'run' / 'last.pt')['world_size'] == 2
    r = launch('--set', 'run.max_steps=5', '--set', 'optim.accum_steps=2', '--resume', 'auto')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'resumed from' in r.stdout and 'at step 3' in r.stdout
    digests = re.search(r'weight digests of 2 ranks: (\w+) (\w+)', r.stdout)
    assert digests and digests.group(1) == digests.group(2), r.stdout
    assert T.load_checkpoint(tmp_path / 'run' / 'last.pt')['step'] == 5

def test_demo_cli_tiny_run(cache, tmp_path):
    sets = [a for o in BASE + ['run.max_steps=3', 'logging.every=1', 'logging.logger=tensorboard'] for a in ('--set', o)]
    r = run_cli('lyracodec_train', '--demo', '--out', tmp_path / 'run', *sets, timeout=300,
                env={'LYRACODEC_CACHE': str(cache), 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.search(r'demo: held-out MR-STFT distance [\d.]+ at step 0 -> [\d.]+ at step 3: ratio [\d.]+', r.stdout), r.stdout
    run = tmp_path / 'run'
    for step in ('step_0000000', 'step_0000003'):
        assert (run / 'reconstructions' / step / 'clip0_recon.wav').is_file()
        assert (run / 'reconstructions' / step / 'clip0.png').is_file()
    assert (run / 'config.yaml').is_file() and (run / 'last.pt').is_file() and list((run / 'tensorboard').iterdir())
    assert T.load_config(run / 'config.yaml').run.max_steps == 3  # the effective config, overrides included
    r = run_cli('lyracodec_train', 'demo', cache / 'demo', '--out', run, *sets, env={'PYTHONPATH': str(ROOT)})
    assert r.returncode == 2 and 'already holds checkpoints' in r.stderr

def test_bf16_autocast_and_accumulation(corpus, tmp_path):
    "bf16 autocast on CPU with 2 micro-batches per step trains with finite losses; fp16 on CPU is refused by name."
    tr = T.Trainer(cfg_of(corpus, 'run.amp=bf16', 'optim.accum_steps=2', 'run.max_steps=2', 'checkpoint.every=100'),
                   tmp_path / 'run')
    assert tr.amp == torch.bfloat16 and tr.fit() == 0
    assert all(v == v for _, v in tr.history['total']) and tr.skipped == 0
    with pytest.raises(T.ConfigError, match=r'run\.amp'): T.Trainer(cfg_of(corpus, 'run.amp=fp16'), tmp_path / 'x')

@pytest.mark.parametrize('value', ['true', 'model'])
def test_run_compile_modes(corpus, tmp_path, monkeypatch, value):
    """run.compile=true (= blocks) compiles each encoder/decoder block in place, model the whole forward pass (with
    dynamo's aot_eager backend here: no C++ build); checkpoints keep the uncompiled model's keys."""
    from lyracodec import runtime as R
    monkeypatch.setattr(T, 'compile_model', lambda m, mode: R.compile_model(m, mode, backend='aot_eager'))
    tr = T.Trainer(cfg_of(corpus, f'run.compile={value}', 'run.max_steps=2', 'checkpoint.every=100'), tmp_path / 'run')
    compiled = [type(m).__name__ for m in tr.model.modules() if getattr(m, '_compiled_call_impl', None) is not None]
    assert compiled == (['EncoderBlock'] * 5 + ['DecoderBlock'] * 5 if value == 'true' else ['VAE'])
    assert tr.fit() == 0 and tr.skipped == 0
    keys = T.load_checkpoint(tmp_path / 'run' / 'last.pt')['model']  # compiled in place: the usual keys
    assert keys.keys() == T.VAE(tr.model.cfg).state_dict().keys()

def test_stream_runs_across_epochs_and_resumes_anywhere(corpus, tmp_path):
    """The loader is iterated once for three epochs (workers read on), and a stream restarted at any (epoch, batch) —
    mid-epoch, or an old checkpoint's (epoch, end of epoch) — continues with the same batches, bit for bit."""
    cfg = cfg_of(corpus, 'data.num_workers=1', 'data.prefetch_factor=3')
    a = T.Trainer(cfg, tmp_path / 'a')
    per = a.sampler.batches_per_epoch
    iters = []
    orig_iter = type(a.sampler).__iter__
    a.sampler.__class__ = type('Counting', (type(a.sampler),), {'__iter__': lambda s: (iters.append(1), orig_iter(s))[1]})
    stream = a.micro_batches()
    batches, states = [], []
    for _ in range(3 * per + 2):
        batches.append(next(stream)); states.append((a.epoch, a.position))
    assert len(iters) == 1, 'the loader was restarted'
    assert states[per - 1] == (1, 0) and states[-1] == (3, 2)
    assert not torch.equal(batches[0], batches[per])  # another epoch, other crops
    for (epoch, position), k in (((1, 3), per + 3), ((0, per), per), ((2, 0), 2 * per)):
        b = T.Trainer(cfg, tmp_path / f'b{k}')
        b.epoch, b.position = epoch, position
        s = b.micro_batches()
        for j in range(k, k + 4): assert torch.equal(next(s), batches[j]), (epoch, position, j)
