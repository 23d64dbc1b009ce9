"Faults a user met (issue 12): no data lost, one clear line, a non-zero exit."
import json, os, signal, shutil, time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lyracodec.vae import VAE, VAEConfig, save_pretrained
from lyracodec.codec import encode_main, decode_main, reconstruct_main, save_latents, latent_meta
from lyracodec.metrics import eval_main
from lyracodec.checkpoint import save_checkpoint, load_checkpoint, CKPT_FORMAT
from lyracodec.core import atomic_write
from lyracodec import trainer as T
from lyracodec.demo_corpus import make_demo_corpus

SR = 44100

@pytest.fixture(scope='module')
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp('model')
    save_pretrained(VAE(VAEConfig.preset('tiny')).eval(), d)
    return d

def wav(path: Path, seconds: float=0.5, value=None) -> Path:
    x = 0.3 * np.random.default_rng(0).standard_normal((int(seconds * SR), 2)).astype('float32')
    if value is not None: x[100:200] = value
    sf.write(path, x, SR, subtype='FLOAT')
    return path

def one_error_line(err: str, *must): 
    lines = [l for l in err.strip().splitlines() if 'error' in l]
    assert lines and all(any(m in l for l in lines) for m in must), err
    assert 'Traceback' not in err, err

def test_decode_into_the_input_folder_keeps_the_original(tmp_path, model_dir, capsys):
    w = tmp_path / 'w'; w.mkdir(); song = wav(w / 'song.wav')
    before = song.read_bytes()
    assert encode_main(['--model', str(model_dir), '-o', str(w), str(song), '-q']) == 0
    assert decode_main(['--model', str(model_dir), '-o', str(w), str(w / 'song.lyra'), '-q']) == 1
    assert song.read_bytes() == before
    one_error_line(capsys.readouterr().err, 'already exists (pass --overwrite')

def test_same_stem_collision_refused_up_front(tmp_path, model_dir, capsys):
    src = tmp_path / 'songs'; src.mkdir(); wav(src / 'a.wav'); sf.write(src / 'a.flac', np.zeros((SR, 2)), SR)
    assert encode_main(['--model', str(model_dir), '-o', str(tmp_path / 'out'), str(src), '-q']) == 2
    assert not list((tmp_path / 'out').glob('*.lyra'))
    one_error_line(capsys.readouterr().err, 'a.lyra')

def test_reconstruct_onto_its_own_folder_refused(tmp_path, model_dir, capsys):
    src = tmp_path / 'songs'; src.mkdir(); song = wav(src / 'song.wav'); before = song.read_bytes()
    assert reconstruct_main(['--model', str(model_dir), '-o', str(src), str(src), '-q']) == 2
    assert song.read_bytes() == before
    one_error_line(capsys.readouterr().err, 'is an input of this run')

def test_eval_refuses_csv_onto_reference_and_truncated_estimate(tmp_path, capsys):
    ref = wav(tmp_path / 'ref.wav', 2.0); est = wav(tmp_path / 'est.wav', 0.67); before = ref.read_bytes()
    assert eval_main([str(ref), str(ref), '--csv', str(ref), '-q']) == 2
    assert ref.read_bytes() == before
    one_error_line(capsys.readouterr().err, 'is an input')
    assert eval_main([str(ref), str(est), '--csv', str(tmp_path / 'm.csv'), '-q']) == 1
    one_error_line(capsys.readouterr().err, 'lengths differ')

def test_nan_audio_is_an_error_naming_the_file(tmp_path, model_dir, capsys):
    bad = wav(tmp_path / 'nan.wav', value=np.nan)
    assert encode_main(['--model', str(model_dir), '-o', str(tmp_path / 'o'), str(bad), '-q']) == 1
    one_error_line(capsys.readouterr().err, 'nan.wav', 'NaN')
    assert not list((tmp_path / 'o').rglob('*.lyra'))
    assert eval_main([str(bad), str(bad), '--csv', str(tmp_path / 'm.csv'), '-q']) == 1
    one_error_line(capsys.readouterr().err, 'NaN')

def test_lyra_nonsense_length_refused_and_all_items_decoded(tmp_path, model_dir, capsys):
    model = VAE.from_pretrained(model_dir)
    z = torch.zeros(2, 64, 3)
    save_latents(tmp_path / 'zero.lyra', z[:1], {**latent_meta(model, 100), 'length': 0})
    assert decode_main(['--model', str(model_dir), '-o', str(tmp_path / 'o'), str(tmp_path / 'zero.lyra'), '-q']) == 1
    one_error_line(capsys.readouterr().err, '"length" is 0')
    assert not (tmp_path / 'o' / 'zero.wav').exists()
    save_latents(tmp_path / 'two.lyra', z, latent_meta(model, 5000))
    assert decode_main(['--model', str(model_dir), '-o', str(tmp_path / 'o'), str(tmp_path / 'two.lyra'), '-q']) == 0
    assert sorted(p.name for p in (tmp_path / 'o').glob('two*.wav')) == ['two.0.wav', 'two.1.wav']

def test_bad_model_folders_one_line(tmp_path, capsys):
    d = tmp_path / 'm'; d.mkdir(); (d / 'model.safetensors').write_bytes(b'truncated')
    for cfg in ('{"config": null}', '{"config": {"c_mults": 5}}'):
        (d / 'config.json').write_text(cfg)
        assert encode_main(['--model', str(d), '-o', str(tmp_path / 'o'), str(tmp_path), '-q']) == 2
        one_error_line(capsys.readouterr().err, 'config')

def test_atomic_write_leaves_no_temp_and_uses_umask(tmp_path):
    old = os.umask(0o022)
    try: p = atomic_write(tmp_path / 'x.txt', lambda t: Path(t).write_text('hi'))
    finally: os.umask(old)
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)
    assert [f.name for f in tmp_path.iterdir()] == ['x.txt']

def test_flipped_byte_checkpoint_refused(tmp_path):
    p = save_checkpoint({'format': CKPT_FORMAT, 'w': torch.arange(4096.)}, tmp_path / 'c.pt')
    raw = bytearray(p.read_bytes()); k = raw.find(torch.tensor(2000.).numpy().tobytes()); raw[k + 1] ^= 0x10
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='checksum mismatch'): load_checkpoint(p)

def test_config_values_finite_and_in_range():
    for item, key in (('optim.lr=.inf', 'optim.lr'), ('data.silence_db=.nan', 'data.silence_db'), ('run.seed=-1', 'run.seed')):
        with pytest.raises(T.ConfigError, match=key.replace('.', r'\.')): T.load_config('demo', [item])

# ---- the trainer
BASE = ['data.target_length=4096', 'data.valid_length=8192', 'data.batch_size=2', 'data.num_workers=0',
        'data.valid_ratio=0.25', 'logging.logger=none', 'logging.progress=false', 'logging.valid_clips=2',
        'logging.recon_clips=0', 'logging.valid_every=0', 'logging.audio_every=0', 'run.threads=1',
        'schedule.warmup_steps=2', 'checkpoint.export=false']

@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path: return make_demo_corpus(tmp_path_factory.mktemp('c') / 'demo', minutes=0.5)

def cfg_of(corpus, *extra): return T.load_config('demo', BASE + [f'data.root={corpus}', *extra])

def test_resume_auto_falls_back_to_newest_valid_step(corpus, tmp_path):
    run = tmp_path / 'run'
    assert T.Trainer(cfg_of(corpus, 'run.max_steps=4', 'checkpoint.every=2', 'checkpoint.keep_last=3'), run).fit() == 0
    (run / 'last.pt').unlink()
    raw = bytearray((run / 'step_0000004.pt').read_bytes()); raw[len(raw) // 2] ^= 0xFF
    (run / 'step_0000004.pt').unlink(); (run / 'step_0000004.pt').write_bytes(bytes(raw))
    logs = []
    tr = T.Trainer(cfg_of(corpus, 'run.max_steps=4', 'checkpoint.every=2'), run, resume='auto', log=logs.append)
    assert tr.step == 2 and any('falling back' in l for l in logs)

def test_second_trainer_on_same_folder_stops(corpus, tmp_path):
    from lyracodec.core import FolderLock
    run = tmp_path / 'run'; run.mkdir()
    with FolderLock(run):  # what a running trainer holds
        with pytest.raises(OSError, match='a lyracodec_train is training in this folder'):
            T.Trainer(cfg_of(corpus, 'run.max_steps=1'), run).fit()
        assert not (run / 'config.yaml').exists()   # the second trainer wrote nothing

def test_resume_refuses_another_model_and_lists_changes(corpus, tmp_path):
    run = tmp_path / 'run'
    assert T.Trainer(cfg_of(corpus, 'run.max_steps=2', 'checkpoint.every=2'), run).fit() == 0
    with pytest.raises(ValueError, match=r'another model \(model\.preset'):
        T.Trainer(cfg_of(corpus, 'run.max_steps=4', 'model.preset=small'), run, resume='auto')
    logs = []
    T.Trainer(cfg_of(corpus, 'run.max_steps=4', 'optim.lr=2e-4'), run, resume='auto', log=logs.append)
    assert any('optim.lr' in l and 'run.max_steps' in l for l in logs), logs

def test_best_is_weights_only_and_out_must_be_a_folder(corpus, tmp_path, capsys):
    run = tmp_path / 'run'; run.mkdir()
    (run / '.step_0000030.pt.999999999-abc.tmp').write_bytes(b'left by a killed run')   # its writer is not running
    assert T.Trainer(cfg_of(corpus, 'run.max_steps=2', 'checkpoint.every=2', 'logging.valid_every=1'), run).fit() == 0
    assert not list(run.glob('.*.tmp'))
    assert sorted(f.name for f in (run / 'best').iterdir()) == ['config.json', 'model.safetensors']
    (tmp_path / 'file').write_text('x')
    assert T.main(['demo', str(corpus), '--out', str(tmp_path / 'file')]) == 2
    one_error_line(capsys.readouterr().err, 'is a file')

def test_mostly_silent_file_warned(tmp_path):
    from lyracodec.dataset import VocalDataset, AudioFileWarning
    sf.write(tmp_path / 'silent.wav', np.zeros((SR * 30, 2), 'float32'), SR)
    wav(tmp_path / 'ok.wav', 1.0)
    ds = VocalDataset(tmp_path, split=None, target_length=8192)
    with pytest.warns(AudioFileWarning, match='silent.wav: mostly silent'):
        for i in range(40): ds[i]
    assert 'mostly silent: silent.wav' in ds.summary()

def test_disk_full_names_the_output_and_goes_on(tmp_path, model_dir, capsys, monkeypatch):
    "A stubbed writer that fills the disk on one file: that output is named, nothing is left of it, the next file is done."
    import errno, lyracodec.core as core
    src = tmp_path / 'in'; src.mkdir(); wav(src / 'a.wav'); wav(src / 'b.wav')
    real = core.os.fsync
    def fsync(fd):
        if os.readlink(f'/proc/self/fd/{fd}').split('/')[-1].startswith('.a.lyra.'): raise OSError(errno.ENOSPC, 'No space left on device')
        return real(fd)
    monkeypatch.setattr(core.os, 'fsync', fsync)
    assert encode_main(['--model', str(model_dir), '-o', str(tmp_path / 'o'), str(src), '-q']) == 1
    one_error_line(capsys.readouterr().err, 'a.lyra: disk full')
    assert sorted(f.name for f in (tmp_path / 'o').iterdir()) == ['b.lyra']

def test_disk_full_on_a_real_small_filesystem(tmp_path, model_dir, capsys):
    "A 256 kB tmpfs (where this runs as root); decoding 3 s of float WAV does not fit."
    import subprocess
    small = tmp_path / 'small'; small.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(small)], capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here')
    try:
        song = wav(tmp_path / 'song.wav', 3.0)
        assert reconstruct_main(['--model', str(model_dir), '-o', str(small), str(song), '-q']) == 1
        one_error_line(capsys.readouterr().err, 'song.wav: disk full')
        assert list(small.iterdir()) == []
    finally: subprocess.run(['umount', str(small)])

def test_truncated_wav_is_encoded_with_one_warning_line(tmp_path, model_dir, capsys):
    song = wav(tmp_path / 'song.wav', 1.0)
    raw = song.read_bytes(); song.write_bytes(raw[: len(raw) // 2])
    assert encode_main(['--model', str(model_dir), '-o', str(tmp_path / 'o'), str(song), '-q', '--precision', 'fp32']) == 0
    err = capsys.readouterr().err
    warn = [l for l in err.splitlines() if 'warning' in l]
    assert len(warn) == 1 and 'song.wav: truncated' in warn[0], err

def test_eval_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    import errno, lyracodec.metrics as M
    ref = wav(tmp_path / 'ref.wav', 1.0)
    def full(path, fn): raise OSError(errno.ENOSPC, 'No space left on device', str(path))
    monkeypatch.setattr(M, 'atomic_write', full)
    assert eval_main([str(ref), str(ref), '--csv', str(tmp_path / 'm.csv'), '-q']) == 1
    one_error_line(capsys.readouterr().err, 'm.csv: disk full')

def test_more_one_line_errors(tmp_path, capsys):
    "Binary YAML, --csv onto a folder, --sample-rate 0, and a pickled training checkpoint: each one line, no advice to unpickle."
    (tmp_path / 'bin.yaml').write_bytes(bytes(range(256)))
    assert T.main([str(tmp_path / 'bin.yaml'), str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, 'bin.yaml')
    ref = wav(tmp_path / 'ref.wav', 0.5)
    assert eval_main([str(ref), str(ref), '--csv', str(tmp_path), '-q']) == 2
    one_error_line(capsys.readouterr().err, 'is a folder')
    assert eval_main([str(ref), str(ref), '--csv', str(tmp_path / 'm.csv'), '--sample-rate', '0', '-q']) == 2
    one_error_line(capsys.readouterr().err, '--sample-rate')
    import argparse
    torch.save({'format': CKPT_FORMAT, 'args': argparse.Namespace(lr=1)}, tmp_path / 'pickled.pt')
    with pytest.raises(ValueError, match='arbitrary unpickling, which is refused') as e: load_checkpoint(tmp_path / 'pickled.pt')
    assert 'weights_only=False' not in str(e.value)

def test_trainer_disk_full_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    import errno, lyracodec.checkpoint as C
    def full(path, fn): raise OSError(errno.ENOSPC, 'No space left on device', str(path))
    monkeypatch.setattr(C, 'atomic_write', full)
    args = ['demo', str(corpus), '--out', str(tmp_path / 'run')] + [a for o in BASE + ['run.max_steps=2', 'checkpoint.every=2'] for a in ('--set', o)]
    assert T.main(args) == 2
    one_error_line(capsys.readouterr().err, 'step_0000002.pt: disk full')

# Ctrl-C while the model compiles: Inductor's worker pool dies with it and the compile error used to be taken for
# "compiling failed, run eagerly", so the run went on. Simulated deterministically: a compile that swallows the signal.
@pytest.mark.parametrize('then', ['fails', 'succeeds'])
def test_ctrl_c_during_compile_stops(monkeypatch, then):
    import os, signal
    from lyracodec.codec import CompiledRun
    from lyracodec.vae import VAE, VAEConfig
    model = VAE(VAEConfig.preset('tiny')).eval()
    def compile_swallowing(fn, **kw):
        try: os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)
        except KeyboardInterrupt: pass  # what a compiler's wait on its dead workers does
        if then == 'fails': raise RuntimeError('compile worker pool broken')
        return fn
    monkeypatch.setattr(torch, 'compile', compile_swallowing)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, also where SIGINT came ignored
    try:
        run = CompiledRun(model, 'encode', 4)
        with pytest.raises(KeyboardInterrupt): run(torch.zeros(1, 2, 4 * model.hop_length))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    finally: signal.signal(signal.SIGINT, before)
