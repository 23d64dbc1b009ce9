"lyracodec_preencode (issue 11): exact latents, shards and index, resume after kill -9, two ranks, statistics, LatentDataset."
import csv, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import ROOT, save_two_tiny_models
from lyracodec.vae import VAE
from lyracodec.codec import encode_file
from lyracodec.latents import LatentDataset, decode_index_item
from lyracodec.preencode import (main, file_sha256, INDEX_NAME, SKIPPED_NAME,
                                 STATS_NAME, META_NAME, SHARD_DIR)

SR = 44100
CHUNK = ['--chunk-frames', '32', '--overlap-frames', '8']
EXACT = ['--dtype', 'float32', '--precision', 'fp32', '-q', *CHUNK]
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
GOOD = ['long.wav', 'short.wav', 'sub/mono.flac', 'sub/song.mp3']

def noise(seconds: float, channels: int=2, sr: int=SR, seed: int=0) -> np.ndarray:
    return 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels)).astype('float32')  # [T, C]

@pytest.fixture(scope='module')
def work(tmp_path_factory) -> Path:
    "A tiny model, another model, and a corpus of every length and kind, with three faulty files."
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('pre')
    save_two_tiny_models(d)
    a = d / 'audio'; (a / 'sub').mkdir(parents=True)
    sf.write(a / 'long.wav', noise(9.0), SR, subtype='FLOAT')                    # 194 frames: 8 chunks of 32
    sf.write(a / 'short.wav', noise(0.2, seed=1), SR)                             # 5 frames, padded
    sf.write(a / 'sub' / 'mono.flac', noise(3.3, 1, 22050, seed=2), 22050)        # mono, resampled
    sf.write(a / 'sub' / 'song.mp3', noise(2.5, sr=48000, seed=3), 48000)         # mp3 at 48 kHz
    (a / 'bad.wav').write_bytes(b'RIFF nonsense')
    sf.write(a / 'empty.wav', np.zeros((0, 2), 'float32'), SR)
    x = noise(1.0); x[100:200] = np.nan; sf.write(a / 'nan.wav', x, SR, subtype='FLOAT')
    return d

def index_of(out: Path) -> list: return [json.loads(l) for l in (out / INDEX_NAME).read_text().splitlines()]
def skipped_of(out: Path) -> list: return list(csv.DictReader(open(out / SKIPPED_NAME)))
def shards_of(out: Path) -> list: return sorted(p.name for p in (out / SHARD_DIR).iterdir())

def copy_good(work: Path, dest: Path) -> Path:
    for rel in GOOD: (dest / rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(work / 'audio' / rel, dest / rel)
    return dest

def test_latents_equal_encode_file_and_stats(work, tmp_path, capsys):
    model, out = VAE.from_pretrained(work / 'model'), tmp_path / 'lat'
    rc = main([str(work / 'model'), str(work / 'audio'), str(out), '--workers', '2', '--batch', '3', '--shard-size', '0.02', *EXACT])
    err = capsys.readouterr().err
    assert rc == 1, err  # three files skipped
    idx = index_of(out)
    assert [r['path'] for r in idx] == sorted(GOOD)
    assert {r['path'] for r in skipped_of(out)} == {'bad.wav', 'empty.wav', 'nan.wav'}
    for name in ('bad.wav', 'empty.wav', 'nan.wav'):
        assert sum(name in l and 'skipped' in l for l in err.splitlines()) == 1, err
    assert 'Traceback' not in err and len(shards_of(out)) >= 2
    ds, zs = LatentDataset(out), []
    for i, r in enumerate(idx):
        src = work / 'audio' / r['path']
        ref, n, info = encode_file(model, src, 32, 8)  # [1, D, F]
        z = ds.read(i)
        assert (r['samples'], r['frames'], r['source_sample_rate']) == (n, ref.shape[-1], info['sample_rate'])
        assert r['sha256'] == file_sha256(src) and r['source_channels'] == info['channels']
        assert (z - ref[0]).abs().max() <= 1e-5 * ref.abs().max(), r['path']
        zs.append(z.double())
    whole = torch.cat(zs, 1)  # [D, all frames]
    s = json.loads((out / STATS_NAME).read_text())
    assert s['frames'] == whole.shape[1] and s['files'] == 4 and s['channels'] == 64
    np.testing.assert_allclose(s['mean'], whole.mean(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s['std'], whole.std(1, correction=0), rtol=1e-9)
    np.testing.assert_allclose([s['global_std'], s['global_min'], s['global_max']],
                               [whole.std(correction=0), whole.min(), whole.max()], rtol=1e-9)
    meta = json.loads((out / META_NAME).read_text())
    assert meta['model_config'] == model.cfg.to_dict() and meta['lyracodec_version'] and len(meta['model_fingerprint']) == 16
    # normalised crops, several workers, whole files, fixed crops
    train = LatentDataset(out, frames=16, normalize='channel')
    assert train.dropped == 1 and len(train) == 3  # short.wav has 5 frames
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3, num_workers=2)))
    assert batch.shape == (3, 64, 16) and torch.isfinite(batch).all()
    val = LatentDataset(out, frames=16, random_crop=False, normalize='global')
    assert torch.equal(val[0], val[0]) and torch.allclose(val.denormalize(val[0]), LatentDataset(out, 16, False)[0], atol=1e-5)
    y = decode_index_item(model, out, 'sub/mono.flac')
    assert y.shape == (2, idx[2]['samples']) and torch.isfinite(y).all()

def test_float16_in_one_process(work, tmp_path):
    "No workers, batch 1, float16 storage: equal to encode_file to float16 precision."
    model, out = VAE.from_pretrained(work / 'model'), tmp_path / 'lat16'
    d = copy_good(work, tmp_path / 'audio')
    assert main([str(work / 'model'), str(d), str(out), '--workers', '0', '--batch', '1', '--dtype', 'float16',
                 '--precision', 'fp32', '-q', *CHUNK]) == 0
    ds = LatentDataset(out)
    for i, r in enumerate(ds.items):
        ref = encode_file(model, d / r['path'], 32, 8)[0][0]
        assert torch.allclose(ds.read(i), ref, rtol=1e-3, atol=1e-3 * ref.abs().max())

def test_sample_is_reproducible_and_batching_free(work, tmp_path):
    "--sample draws from the posterior with a per-file seed: the same draws whatever the batch and workers."
    d = copy_good(work, tmp_path / 'audio')
    run = lambda name, *extra: main([str(work / 'model'), str(d), str(tmp_path / name), '-q', *EXACT, *extra])
    assert run('s1', '--sample', '--batch', '1', '--workers', '0') == 0
    assert run('s2', '--sample', '--batch', '4', '--workers', '2') == 0
    assert run('mean', '--workers', '0') == 0
    a, b, m = (LatentDataset(tmp_path / n) for n in ('s1', 's2', 'mean'))
    for i in range(len(a)):
        assert torch.allclose(a.read(i), b.read(i), atol=1e-5)
        assert (a.read(i) - m.read(i)).abs().mean() > 1e-3  # a draw, not the mean
    assert json.loads((tmp_path / 's1' / META_NAME).read_text())['sample'] is True
    assert run('s1', '--workers', '0') == 2  # a rerun without --sample is refused

def test_rerun_resumes_refuses_and_overwrites(work, tmp_path, capsys):
    d = copy_good(work, tmp_path / 'audio')
    out = tmp_path / 'lat'
    args = [str(work / 'model'), str(d), str(out), '--workers', '0', *EXACT]
    assert main(args) == 0
    first, shards = index_of(out), shards_of(out)
    capsys.readouterr()
    assert main(args) == 0
    e = capsys.readouterr().err
    assert '0 file(s) encoded' in e and '4 already done' in e, e
    assert index_of(out) == first and shards_of(out) == shards
    def refused(argv, *must):
        assert main(argv) == 2
        e = capsys.readouterr().err.strip().splitlines()
        assert len(e) == 1 and all(m in e[0] for m in must) and 'Traceback' not in e[0], e
    refused([str(work / 'other'), *args[1:]], 'fingerprint', '--overwrite')
    refused([*args, '--dtype', 'float16'], 'dtype', 'float32', 'float16')
    foreign = tmp_path / 'foreign'; foreign.mkdir(); (foreign / 'notes.txt').write_text('mine')
    refused([args[0], args[1], str(foreign), *args[3:]], 'not empty')
    refused([args[0], str(tmp_path / 'nowhere'), *args[2:]], 'nowhere')
    refused([args[0], args[1], args[1], *args[3:]], 'AUDIO_DIR')
    assert (foreign / 'notes.txt').read_text() == 'mine' and sorted(os.listdir(foreign)) == ['notes.txt']
    assert main([*args, '--overwrite', '--dtype', 'bfloat16']) == 0
    assert [r['path'] for r in index_of(out)] == sorted(GOOD) and not set(shards_of(out)) & set(shards)
    assert json.loads((out / META_NAME).read_text())['dtype'] == 'bfloat16'
    ds, model = LatentDataset(out), VAE.from_pretrained(work / 'model')
    ref = encode_file(model, d / ds.items[0]['path'], 32, 8)[0][0]
    assert torch.allclose(ds.read(0), ref, rtol=1e-2, atol=1e-2 * ref.abs().max())  # bfloat16 precision

def test_kill_9_then_rerun_lists_every_file_once(work, tmp_path, capsys):
    d = tmp_path / 'audio'; d.mkdir()
    for i in range(20): sf.write(d / f'f{i:02d}.wav', noise(3.0, seed=10 + i), SR)
    (d / 'bad.wav').write_bytes(b'nonsense')
    out = tmp_path / 'lat'
    args = [str(work / 'model'), str(d), str(out), '--workers', '1', '--shard-size', '0.000001', *EXACT]  # a shard per file
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from lyracodec.preencode import main; sys.exit(main())', *args],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not ((out / SHARD_DIR).is_dir() and len([s for s in shards_of(out) if not s.startswith('.')]) >= 3):
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 120, 'no shard written'
            time.sleep(0.01)
        assert p.poll() is None, 'finished before it could be killed'
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the run and its DataLoader worker, mid-run
        p.wait(); p.stderr.close()
    assert p.returncode == -signal.SIGKILL and not (out / INDEX_NAME).exists()
    assert main(args) == 1  # bad.wav is skipped
    e = capsys.readouterr().err
    done = int(e.split(' already done')[0].split()[-1])
    assert done >= 3, e
    names = [r['path'] for r in index_of(out)] + [r['path'] for r in skipped_of(out)]
    assert sorted(names) == sorted(p.name for p in d.iterdir()), names  # every file exactly once
    assert not [s for s in shards_of(out) if s.startswith('.')]  # temporaries of the killed run removed
    ds = LatentDataset(out)
    for i, r in enumerate(ds.items): assert ds.read(i).shape == (64, r['frames']) and torch.isfinite(ds.read(i)).all()
    # a changed file is encoded again; its old shard, now unused, is removed
    sf.write(d / 'f05.wav', noise(2.0, seed=99), SR)
    assert main(args) == 1
    assert '1 file(s) encoded' in capsys.readouterr().err
    r = next(r for r in index_of(out) if r['path'] == 'f05.wav')
    assert r['sha256'] == file_sha256(d / 'f05.wav') and r['samples'] == 2 * SR
    assert len(index_of(out)) == 20 and len(shards_of(out)) == 20

def test_two_ranks_share_the_files(work, tmp_path):
    d = copy_good(work, tmp_path / 'audio')
    script = tmp_path / 'pre.py'
    script.write_text('import sys\nfrom lyracodec.preencode import main\nsys.exit(main())\n')
    common = [str(work / 'model'), str(d), '--workers', '0', '--shard-size', '0.001', *EXACT]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script),
           common[0], common[1], str(tmp_path / 'ddp'), *common[2:]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert main([common[0], common[1], str(tmp_path / 'one'), *common[2:]]) == 0
    two, one = index_of(tmp_path / 'ddp'), index_of(tmp_path / 'one')
    assert [x['path'] for x in two] == [x['path'] for x in one] == sorted(GOOD)
    ranks = {s.split('-r')[1][:3] for s in shards_of(tmp_path / 'ddp')}
    assert ranks == {'000', '001'}, shards_of(tmp_path / 'ddp')
    a, b = LatentDataset(tmp_path / 'ddp'), LatentDataset(tmp_path / 'one')
    for i in range(len(a)): assert torch.allclose(a.read(i), b.read(i), atol=1e-6)
    sa, sb = (json.loads((tmp_path / x / STATS_NAME).read_text()) for x in ('ddp', 'one'))
    assert sa['frames'] == sb['frames'] and sa['files'] == 4
    for k in ('mean', 'std', 'min', 'max'): np.testing.assert_allclose(sa[k], sb[k], rtol=1e-6, atol=1e-9)
    assert abs(sa['global_std'] - sb['global_std']) < 1e-6 * sb['global_std']

def test_second_run_into_the_same_folder_stops(work, tmp_path, capsys):
    from lyracodec.core import FolderLock
    out = tmp_path / 'out'; out.mkdir()
    with FolderLock(out):  # what a running lyracodec_preencode holds
        assert main([str(work / 'model'), str(work / 'audio'), str(out), '-q', '--workers', '0']) == 2
    err = capsys.readouterr().err
    assert 'another lyracodec_preencode is writing to this folder' in err and 'Traceback' not in err
    assert [p.name for p in out.iterdir()] == ['.lock']   # nothing written but the lock the other run holds
