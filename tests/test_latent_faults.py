"Issue 19: the twelve faults of latent datasets and their tools, each reproduced as a hostile user would, and fixed."
import csv, errno, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import ROOT, run_cli, save_two_tiny_models
from lyracodec.codec import encode_main
from lyracodec.latents import LatentDataset
from lyracodec.preencode import main
from lyracodec.shards import INDEX_NAME, META_NAME, SHARD_DIR, SKIPPED_NAME, STATS_NAME, ShardError, file_sha256

SR = 44100
FAST = ['--dtype', 'float32', '--precision', 'fp32', '-q', '--chunk-frames', '32', '--overlap-frames', '8']
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
ODD = os.fsdecode(b'\xffodd.wav')  # a name that is not UTF-8

def noise(seconds: float, channels: int=2, seed: int=0) -> np.ndarray:
    return 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * SR), channels)).astype('float32')  # [T, C]

@pytest.fixture(scope='module')
def models(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('models')
    save_two_tiny_models(d)
    return d

def audio_dir(root: Path, n: int=3, seconds: float=1.0) -> Path:
    d = root / 'audio'; d.mkdir()
    for i in range(n): sf.write(d / f'f{i}.wav', noise(seconds, seed=i), SR)
    return d

def pre(models: Path, audio: Path, out: Path, *extra) -> list:
    return [str(models / 'model'), str(audio), str(out), '--workers', '0', *FAST, *extra]

def error_lines(err: str) -> list: return [l for l in err.splitlines() if ': error:' in l or ': fault:' in l]

def no_traceback(err: str): assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]

def index_of(out: Path) -> list: return [json.loads(l) for l in (out / INDEX_NAME).read_text().splitlines()]

def skipped_of(out: Path) -> list:
    with open(out / SKIPPED_NAME, newline='', errors='surrogateescape') as f: return list(csv.DictReader(f))

def shards_of(out: Path) -> list: return sorted(p.name for p in (out / SHARD_DIR).iterdir())

# 1: a name that is not UTF-8
def test_a_name_of_any_bytes_is_encoded_and_kept_losslessly(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 2)
    shutil.copy(d / 'f0.wav', d / ODD)
    out = tmp_path / 'out'
    for _ in range(2): assert main(pre(models, d, out)) == 0, capsys.readouterr().err
    names = [r['path'] for r in index_of(out)]
    assert ODD in names and os.fsencode(ODD) == b'\xffodd.wav'  # JSON kept the bytes (as \udcff)
    assert (out / STATS_NAME).is_file() and skipped_of(out) == []
    ds = LatentDataset(out)
    assert torch.allclose(ds.read(names.index(ODD)), ds.read(names.index('f0.wav')), atol=1e-6)  # same audio, same latents

# 11: a garbage file whose name holds a newline
def test_skip_reason_is_whole_with_the_newline_escaped(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 1)
    (d / 'bad\nname.wav').write_bytes(b'RIFF garbage')
    (d / os.fsdecode(b'bad\xff.wav')).write_bytes(b'garbage too')
    out = tmp_path / 'out'
    assert main(pre(models, d, out)) == 1
    err = capsys.readouterr().err
    reasons = {r['path']: r['reason'] for r in skipped_of(out)}
    assert set(reasons) == {'bad\nname.wav', os.fsdecode(b'bad\xff.wav')}  # the names exactly, as their bytes
    r = reasons['bad\nname.wav']
    assert 'bad\\nname.wav' in r and 'cannot read audio' in r and '\n' not in r, r
    assert 'bad\\xff.wav' in reasons[os.fsdecode(b'bad\xff.wav')]
    assert any('bad\\nname.wav: cannot read audio' in l for l in err.splitlines()), err

# 2: a flipped byte in a shard
def test_flipped_byte_is_found_set_aside_and_reencoded(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 3)
    out = tmp_path / 'out'
    assert main(pre(models, d, out, '--shard-size', '0.000001')) == 0  # a shard per file
    before = {r['path']: LatentDataset(out).read(i) for i, r in enumerate(index_of(out))}
    victim = index_of(out)[1]
    shard = out / victim['shard']
    raw = bytearray(shard.read_bytes()); raw[len(raw) - 3000] ^= 0x20; shard.write_bytes(raw)
    with pytest.raises(ShardError, match=f'{shard.name}: damaged'): LatentDataset(out)[1]
    capsys.readouterr()
    assert main(['--verify', str(out)]) == 1
    err = capsys.readouterr().err
    assert f'{shard.name}: damaged' in err and 'fault(s)' in err.splitlines()[-1], err
    assert main(pre(models, d, out, '--shard-size', '0.000001')) == 0  # the rerun notices, sets aside, re-encodes
    err = capsys.readouterr().err
    assert f'{shard.name}: damaged' in err and f'set aside as {shard.name}.damaged' in err and '1 file(s) encoded' in err, err
    assert (shard.parent / f'{shard.name}.damaged').read_bytes() == bytes(raw)  # kept, never deleted
    ds = LatentDataset(out)
    for i, r in enumerate(ds.items): assert torch.allclose(ds.read(i), before[r['path']], atol=1e-6)
    assert main(['--verify', str(out)]) == 0
    assert 'no fault' in capsys.readouterr().err

# 7: a truncated shard
def test_truncated_shard_is_reported_once_and_set_aside(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 2)
    out = tmp_path / 'out'
    assert main(pre(models, d, out, '--shard-size', '0.000001')) == 0
    shard = out / index_of(out)[0]['shard']
    shard.write_bytes(shard.read_bytes()[:-100])
    capsys.readouterr()
    assert main(pre(models, d, out, '--shard-size', '0.000001')) == 0
    err = capsys.readouterr().err
    assert err.count(shard.name + ':') == 1 and 'truncated' in err, err
    assert main(pre(models, d, out, '--shard-size', '0.000001')) == 0
    err = capsys.readouterr().err
    assert shard.name not in err and '2 already done' in err, err
    assert len(index_of(out)) == 2

# 8 and 12: a hostile or damaged index
@pytest.mark.parametrize('edit, message', [
    (lambda lines: lines[:1] + ['{"path": "x.wav", garbage'] + lines[1:], 'index.jsonl line 2: not valid JSON'),
    (lambda lines: [lines[0].replace('"frames"', '"frame"')] + lines[1:], "index.jsonl line 1: the record has no 'frames'"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), 'shard': '/etc/hostname'})] + lines[1:], "shard '/etc/hostname' is not a file in shards/"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), 'shard': '../../x.safetensors'})] + lines[1:], "shard '../../x.safetensors' is not a file in shards/"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), 'frames': 10 ** 6})] + lines[1:], 'beyond the'),
])
def test_index_faults_name_the_file_and_line(models, tmp_path, capsys, edit, message):
    d = audio_dir(tmp_path, 2)
    out = tmp_path / 'out'
    assert main(pre(models, d, out)) == 0
    p = out / INDEX_NAME
    p.write_text('\n'.join(edit(p.read_text().splitlines())) + '\n')
    with pytest.raises((ShardError, FileNotFoundError), match=message.replace('(', r'\(').replace('[', r'\[')):
        ds = LatentDataset(out); ds.read(0)
    capsys.readouterr()
    assert main(['--verify', str(out)]) == 1
    err = capsys.readouterr().err
    no_traceback(err)
    assert error_lines(err), err

def test_truncated_shard_read_by_latent_dataset_is_named(models, tmp_path):
    d = audio_dir(tmp_path, 1)
    out = tmp_path / 'out'
    assert main(pre(models, d, out)) == 0
    shard = out / index_of(out)[0]['shard']
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardError, match=f'{shard.name}: truncated'): LatentDataset(out, verify=False)[0]

# 3: disk full through safetensors
def test_encode_disk_full_through_safetensors_is_one_line_and_goes_on(models, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    src = audio_dir(tmp_path, 2)
    real = safetensors.torch.save_file
    def save_file(t, path, metadata=None):
        if Path(path).name.startswith('.f0.lyra.'): raise safetensors.SafetensorError('No space left on device (os error 28)')
        return real(t, path, metadata=metadata)
    monkeypatch.setattr(safetensors.torch, 'save_file', save_file)
    assert encode_main(['--model', str(models / 'model'), '-o', str(tmp_path / 'o'), str(src), '-q', '--precision', 'fp32']) == 1
    err = capsys.readouterr().err
    no_traceback(err)
    lines = error_lines(err)
    assert len(lines) == 1 and 'f0.lyra: disk full' in lines[0], err
    assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == ['f1.lyra']  # nothing left of f0, f1 done

def test_encode_disk_full_on_a_real_small_filesystem(models, tmp_path, capsys):
    small = tmp_path / 'small'; small.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(small)], capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here')
    try:
        src = tmp_path / 'src'; src.mkdir()
        sf.write(src / 'long.wav', noise(12.0), SR)  # 259 frames x 64 float32 = 66 kB of latents: does not fit
        sf.write(src / 'short.wav', noise(0.1), SR)
        assert encode_main(['--model', str(models / 'model'), '-o', str(small), str(src), '-q', '--precision', 'fp32']) == 1
        err = capsys.readouterr().err
        no_traceback(err)
        assert [l for l in error_lines(err) if 'long.lyra: disk full' in l], err
        assert sorted(p.name for p in small.iterdir()) == ['short.lyra']
    finally: subprocess.run(['umount', str(small)])

# 4: sizes nobody means
@pytest.mark.parametrize('field, value', [('channels', 1_000_000_000), ('latent_dim', 10 ** 12), ('channels', 2048)])
def test_model_folder_of_absurd_size_is_refused_before_allocating(models, tmp_path, field, value):
    m = tmp_path / 'huge'; shutil.copytree(models / 'model', m)
    meta = json.loads((m / 'config.json').read_text()); meta['config'][field] = value
    (m / 'config.json').write_text(json.dumps(meta))
    src = audio_dir(tmp_path, 1)
    for cmd, args in (('lyracodec_encode', ['--model', m, '-o', tmp_path / 'o', src]),
                      ('lyracodec_preencode', [m, src, tmp_path / 'p'])):
        r = run_cli(cmd, *args, timeout=120)
        assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and f'config.{"channels" if field == "channels" else field}' in lines[0], r.stderr
    assert not (tmp_path / 'p').exists()

def test_train_override_of_absurd_size_is_one_line(tmp_path):
    d = audio_dir(tmp_path, 1)
    r = run_cli('lyracodec_train', 'demo', d, '--out', tmp_path / 'run', '--set', 'model.overrides.channels=1000000000', timeout=120)
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert 'model.overrides.channels' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / 'run').exists()

# 5: the lock dies with its process, not with its DataLoader workers
def children_of(pid: int) -> list:
    kids = []
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try: stat = (p / 'stat').read_text()
            except OSError: continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid: kids.append(int(p.name))
    return kids

def alive(pid: int) -> bool:
    try: os.kill(pid, 0); return True
    except ProcessLookupError: return False

def kill_parent_keep_workers(p: subprocess.Popen, ready, what: str) -> list:
    "Wait until `p` has DataLoader workers and `ready()`, SIGKILL `p` alone, and return the workers (still alive)."
    t0 = time.monotonic()
    while not (children_of(p.pid) and ready()):
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.monotonic() - t0 < 240, f'no {what} with workers'
        time.sleep(0.02)
    workers = children_of(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(); p.stderr.close()
    return [w for w in workers if alive(w)]

def test_preencode_lock_is_free_right_after_kill_9_with_live_workers(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 12, seconds=3.0)
    out = tmp_path / 'out'
    args = [str(models / 'model'), str(d), str(out), '--workers', '2', *FAST, '--shard-size', '0.000001']
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from lyracodec.preencode import main; sys.exit(main())', *args],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = kill_parent_keep_workers(p, lambda: (out / SHARD_DIR).is_dir() and len(shards_of(out)) >= 2, 'preencode')
    try:
        assert workers, 'the workers died with their parent: the test would prove nothing'
        rc = main(args)  # at once, while the orphaned workers still run
        err = capsys.readouterr().err
        assert 'another lyracodec_preencode is writing' not in err and rc == 0, err
        assert sorted(r['path'] for r in index_of(out)) == sorted(p.name for p in d.iterdir())
    finally:
        for w in workers:
            if alive(w): os.kill(w, signal.SIGKILL)

def test_trainer_lock_is_free_right_after_kill_9_with_live_workers(tmp_path):
    from lyracodec.core import FolderLock
    d = tmp_path / 'audio'; d.mkdir()
    for i in range(8): sf.write(d / f'v{i}.wav', noise(2.0, seed=i), SR)
    run = tmp_path / 'run'
    sets = ['data.target_length=4096', 'data.valid_length=8192', 'data.batch_size=2', 'data.num_workers=2',
            'data.valid_ratio=0.25', 'logging.logger=none', 'logging.progress=false', 'logging.valid_every=0',
            'logging.audio_every=0', 'run.threads=1', 'run.max_steps=100000', 'checkpoint.every=1', 'checkpoint.export=false',
            'logging.valid_clips=1', 'logging.recon_clips=1']
    cmd = [str(Path(sys.executable).parent / 'lyracodec_train'), 'demo', str(d), '--out', str(run)]
    for s in sets: cmd += ['--set', s]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = kill_parent_keep_workers(p, lambda: (run / 'step_0000001.pt').exists(), 'training step')
    try:
        assert workers, 'the workers died with their parent: the test would prove nothing'
        with FolderLock(run, 'busy'): pass  # what a rerun takes first: free at once
    finally:
        for w in workers:
            if alive(w): os.kill(w, signal.SIGKILL)

# 6: Ctrl-C
def test_ctrl_c_is_one_line_and_a_rerun_resumes(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 48, seconds=3.0)  # enough work left after the first shards that Ctrl-C lands mid-run
    out = tmp_path / 'out'
    args = [str(models / 'model'), str(d), str(out), '--workers', '1', *FAST, '--shard-size', '0.000001']
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from lyracodec.preencode import main; sys.exit(main())', *args],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal, even if
    t0 = time.monotonic()                                                 # this test runs where SIGINT is ignored (nohup)
    while not ((out / SHARD_DIR).is_dir() and len(shards_of(out)) >= 1):
        assert p.poll() is None and time.monotonic() - t0 < 240
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130, err[-3000:]
    no_traceback(err)
    assert err.strip().splitlines()[-1].startswith('lyracodec_preencode: stopped'), err
    assert main(args) == 0
    assert sorted(r['path'] for r in index_of(out)) == sorted(p.name for p in d.iterdir())

# 9: bad numbers before anything is written
@pytest.mark.parametrize('value', ['inf', 'nan', '-1', '0', '1e300'])
def test_bad_shard_size_refused_before_anything_is_written(models, tmp_path, capsys, value):
    d = audio_dir(tmp_path, 1)
    assert main(pre(models, d, tmp_path / 'out', '--shard-size', value)) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert len(error_lines(err)) == 1 and '--shard-size' in err, err
    assert not (tmp_path / 'out').exists()

# 10: --device cuda without CUDA
@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_device_cuda_without_cuda_says_so_in_every_command(models, tmp_path):
    src = audio_dir(tmp_path, 1)
    for cmd, args in (('lyracodec_encode', ['--model', models / 'model', '-o', tmp_path / 'o', src]),
                      ('lyracodec_reconstruct', ['--model', models / 'model', '-o', tmp_path / 'r', src]),
                      ('lyracodec_decode', ['--model', models / 'model', '-o', tmp_path / 'd', tmp_path / 'x.lyra']),
                      ('lyracodec_preencode', [models / 'model', src, tmp_path / 'p'])):
        r = run_cli(cmd, *args, '--device', 'cuda', timeout=120)
        lines = error_lines(r.stderr)
        assert r.returncode == 2 and len(lines) == 1, (cmd, r.stderr)
        assert '--device: cuda:0 requested but CUDA is not available' in lines[0] and 'safetensors' not in lines[0], (cmd, r.stderr)
    r = run_cli('lyracodec_train', 'demo', src, '--out', tmp_path / 't', '--set', 'run.device=cuda', timeout=120)
    assert r.returncode != 0 and 'run.device: cuda:0 requested but CUDA is not available' in r.stderr, r.stderr

# also seen: a looping symlink, a content change that keeps size and mtime, -o naming a file
def test_looping_symlink_is_listed_as_skipped(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 1)
    (d / 'loop.wav').symlink_to(d / 'loop.wav')
    out = tmp_path / 'out'
    assert main(pre(models, d, out)) == 1
    reasons = {r['path']: r['reason'] for r in skipped_of(out)}
    assert list(reasons) == ['loop.wav'] and 'symbolic links' in reasons['loop.wav'], reasons
    assert [r['path'] for r in index_of(out)] == ['f0.wav']

def test_rehash_finds_a_change_that_kept_size_and_mtime(models, tmp_path, capsys):
    d = audio_dir(tmp_path, 2)
    out = tmp_path / 'out'
    assert main(pre(models, d, out)) == 0
    f = d / 'f1.wav'
    st = f.stat()
    raw = bytearray(f.read_bytes()); raw[-4:] = b'\x00\x00\x80\x3f'; f.write_bytes(raw)  # same size, new content
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    assert main(['--verify', str(out)]) == 0  # without --rehash the change cannot be seen
    assert main(['--verify', str(out), '--rehash']) == 1
    assert 'f1.wav: changed since it was encoded' in capsys.readouterr().err
    assert main(pre(models, d, out)) == 0 and '0 file(s) encoded' in capsys.readouterr().err
    assert main(pre(models, d, out, '--rehash')) == 0 and '1 file(s) encoded' in capsys.readouterr().err
    assert next(r for r in index_of(out) if r['path'] == 'f1.wav')['sha256'] == file_sha256(f)
    assert main(['--verify', str(out), '--rehash']) == 0

def test_out_dir_naming_a_file_says_so(models, tmp_path, capsys):
    src = audio_dir(tmp_path, 1)
    (tmp_path / 'enc').write_text('my notes')
    assert encode_main(['--model', str(models / 'model'), '-o', str(tmp_path / 'enc'), str(src), '-q']) == 2
    assert 'enc: is a file; --out-dir must be a folder' in capsys.readouterr().err
    assert (tmp_path / 'enc').read_text() == 'my notes'

def test_verify_usage_and_unknown_folder(tmp_path, capsys):
    assert main(['--verify', str(tmp_path)]) == 1
    assert 'holds no pre-encoded dataset' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['--verify', str(tmp_path), 'extra'])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main([str(tmp_path)])
    assert e.value.code == 2

def test_a_lost_fd_sharing_connection_prints_nothing():
    "Ctrl-C can kill a DataLoader worker mid-handshake; multiprocessing's sharing thread must not print a traceback then."
    import types, multiprocessing.resource_sharer as rs
    from lyracodec.core import drop_worker_disconnects
    seen = []
    hook = drop_worker_disconnects(seen.append)
    def args_of(code, filename):
        try: exec(compile(code, filename, 'exec'))
        except BaseException as e: return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, thread=None)
    hook(args_of('raise BrokenPipeError(32, "Broken pipe")', rs.__file__))  # raised in the sharing thread: dropped
    assert seen == []
    other = args_of('raise BrokenPipeError(32, "Broken pipe")', 'elsewhere.py')  # anywhere else: passed on
    hook(other); hook(args_of('raise ValueError("x")', rs.__file__))
    assert [type(a.exc_value) for a in seen] == [BrokenPipeError, ValueError]
