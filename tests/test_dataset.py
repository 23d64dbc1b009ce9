"VocalDataset on faulty folders, under DataLoader workers; split stability; the demo corpus and its console script."
import hashlib, json, os, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from helpers import ROOT, run_cli
from lyracodec.dataset import VocalDataset, AugmentConfig, AudioFileWarning, split_of, rms_db, audio_loader
from lyracodec.audio import load_audio
from lyracodec.demo_corpus import make_demo_corpus, DEMO_MANIFEST, demo_clip

SR, L = 44100, 8192

def _noise(seconds, sr=SR, channels=2, seed=0, level=0.3):
    return (level * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels))).astype('float32')

def _sine(seconds, freq, sr, channels=1, level=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return np.repeat((level * np.sin(2 * np.pi * freq * t))[:, None], channels, 1).astype('float32')

@pytest.fixture(scope='module')
def faulty(tmp_path_factory):
    "A folder with two good files and every faulty case of the issue."
    d = tmp_path_factory.mktemp('faulty')
    sf.write(d / 'good_a.wav', _noise(3.0, seed=1), SR, subtype='PCM_16')
    (d / 'sub').mkdir()
    sf.write(d / 'sub' / 'good_b.flac', _noise(3.0, seed=2), SR, subtype='PCM_16')
    sf.write(d / 'full.wav', _noise(2.0, seed=3), SR, subtype='PCM_16')
    b = (d / 'full.wav').read_bytes()
    (d / 'truncated.wav').write_bytes(b[: len(b) // 2])          # data cut in half: header says more
    (d / 'header_only.wav').write_bytes(b[:30])                  # cut inside the header
    (d / 'full.wav').unlink()
    (d / 'text.wav').write_text('this is not audio, only text named .wav\n' * 20)
    (d / 'empty.wav').write_bytes(b'')
    sf.write(d / 'tiny.wav', _noise(0.01, seed=4), SR)           # 10 ms
    sf.write(d / 'zeros.wav', np.zeros((2 * SR, 2), 'float32'), SR)
    six = np.zeros((SR, 6), 'float32'); six[:, 0] = _sine(1.0, 300, SR)[:, 0]; six[:, 2] = _sine(1.0, 300, SR)[:, 0]
    sf.write(d / 'six.wav', six, SR, subtype='FLOAT')
    sf.write(d / 'hi96k.wav', _sine(1.5, 1000, 96000, 2), 96000, subtype='FLOAT')
    sf.write(d / 'low8k.mp3', _sine(2.0, 440, 8000, 1), 8000, format='MP3')
    return d

def _ds(root, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = VocalDataset(root, split=None, target_length=L, **kw)
    return ds, [str(x.message) for x in w if issubclass(x.category, AudioFileWarning)]

def test_faulty_files_are_skipped_once_with_a_named_warning(faulty):
    ds, warned = _ds(faulty)
    indexed = {f.rel for f in ds.files}
    assert indexed == {'good_a.wav', 'sub/good_b.flac', 'truncated.wav', 'zeros.wav', 'six.wav', 'hi96k.wav', 'low8k.mp3'}
    reasons = dict(ds.skipped)
    assert set(reasons) == {'header_only.wav', 'text.wav', 'empty.wav', 'tiny.wav'}
    assert reasons['empty.wav'].startswith('empty file')
    assert reasons['text.wav'].startswith('unreadable') and reasons['header_only.wav'].startswith('unreadable')
    assert reasons['tiny.wav'].startswith('too short (10 ms')
    for name in reasons:  # exactly one warning per skipped file, naming it
        assert sum(name in m for m in warned) == 1, (name, warned)
    s = ds.summary()
    assert '7 files, 4 skipped' in s and all(n in s for n in reasons)

def test_truncated_wav_is_indexed_at_its_real_length(faulty):
    ds, _ = _ds(faulty)
    f = next(f for f in ds.files if f.rel == 'truncated.wav')
    assert 0.9 < f.seconds < 1.01  # header adjusted to the data actually present (2 s written, half kept)
    x = load_audio(f.path)
    assert abs(x.shape[1] - f.frames) < 64

def test_each_indexed_file_gives_stereo_crops(faulty):
    ds, _ = _ds(faulty)
    for fi, f in enumerate(ds.files):
        x = ds._read_crop(fi, 0)
        assert x.shape == (2, L) and x.dtype == np.float32, f.rel
    crop = lambda name: torch.from_numpy(ds._read_crop([f.rel for f in ds.files].index(name), 0).copy())
    six = crop('six.wav')
    torch.testing.assert_close(six[1], six[0] * (0.70710678 / 1.70710678), atol=1e-5, rtol=0)  # 5.1: FL left, FC -3 dB both
    assert six[0].abs().max() > 0.1
    low = crop('low8k.mp3')
    assert torch.equal(low[0], low[1])  # mono duplicated
    hi = crop('hi96k.wav')[0]
    assert int(torch.fft.rfft(hi).abs().argmax()) == round(1000 * L / SR)  # 1 kHz after 96k -> 44.1k

def test_all_zero_file_never_returns_silence_when_audio_exists(faulty):
    ds, _ = _ds(faulty)
    zi = [f.rel for f in ds.files].index('zeros.wav')
    items = [i for i in range(len(ds)) if int(np.searchsorted(ds._cum, i, side='right')) == zi]
    assert items
    for i in items: assert rms_db(ds[i]) > -40

def test_peak_normalisation_and_zero_safety(faulty):
    ds, _ = _ds(faulty, silence_db=-400.0)   # accept anything: zero crops come back as zeros, no NaN
    zi = [f.rel for f in ds.files].index('zeros.wav')
    i = int(ds._cum[zi - 1]) if zi else 0
    x = ds[i]
    assert torch.isfinite(x).all() and x.abs().max() == 0
    y = ds[0]
    assert abs(float(y.abs().max()) - 0.95) < 1e-5

def test_non_finite_samples_are_zeroed(tmp_path):
    x = _noise(2.0, seed=8); x[1000:5000] = np.nan; x[9000] = np.inf
    sf.write(tmp_path / 'nan.wav', x, SR, subtype='FLOAT')
    ds = VocalDataset(tmp_path, split=None, target_length=L)
    crop = torch.from_numpy(ds._read_crop(0, 0).copy())
    assert torch.isfinite(crop).all() and crop[:, 1000:5000].abs().max() == 0
    assert all(torch.isfinite(ds[i]).all() for i in range(len(ds)))

def test_read_time_failure_is_replaced_and_counted(faulty, tmp_path):
    d = tmp_path / 'c'; shutil.copytree(faulty, d)
    ds, _ = _ds(d)
    (d / 'good_a.wav').write_bytes(b'garbage' * 100)   # breaks after indexing
    (d / 'sub' / 'good_b.flac').unlink()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        xs = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (2, L) for x in xs)
    assert ds.read_failures == 2
    assert sum('good_a.wav' in str(m.message) for m in w) == 1
    assert 'good_a.wav (1x)' in ds.summary() and 'sub/good_b.flac (1x)' in ds.summary()

def test_loader_with_workers_survives_the_faulty_folder(faulty):
    ds, _ = _ds(faulty)
    n = sum(b.shape[0] for b in DataLoader(ds, batch_size=3, num_workers=2))
    assert n == len(ds)

@pytest.fixture(scope='module')
def long_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp('long')
    sf.write(d / 'long.wav', _noise(20.0, seed=5), SR, subtype='PCM_16')
    return d

def _fingerprints(batches): return [hashlib.sha1(x.numpy().tobytes()).hexdigest() for b in batches for x in b]

def _loader(ds, workers, seed=0, **kw):
    return DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed), num_workers=workers, **kw)

def test_workers_and_epochs_draw_different_crops(long_folder):
    ds = VocalDataset(long_folder, split=None, target_length=L, seed=3)
    dl = _loader(ds, 2, persistent_workers=True)
    e0 = _fingerprints(dl)
    assert len(e0) == len(ds) > 50 and len(set(e0)) == len(e0)   # both workers: every crop different
    ds.set_epoch(1)  # reaches the persistent workers
    e1 = _fingerprints(dl)
    assert len(set(e1)) == len(e1) and not set(e0) & set(e1)      # a new epoch: new crops
    same = VocalDataset(long_folder, split=None, target_length=L, seed=3)
    assert _fingerprints(_loader(same, 0)) == e0                  # independent of the worker count: exact resume
    other = VocalDataset(long_folder, split=None, target_length=L, seed=4)
    assert not set(_fingerprints(_loader(other, 2))) & set(e0)    # another seed, other crops

def test_an_item_drawn_again_gets_another_crop(long_folder):
    ds = VocalDataset(long_folder, split=None, target_length=L, seed=3)
    first = [ds[5] for _ in range(3)]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    ds.set_epoch(0)   # restarting the epoch restarts the draws
    assert torch.equal(ds[5], first[0])

class _EpochProbe(torch.utils.data.Dataset):
    "Reports, from inside a worker, the epoch the wrapped dataset sees."
    def __init__(self, ds): self.ds = ds
    def __len__(self): return 4
    def __getitem__(self, i): return self.ds.epoch

def test_set_epoch_reaches_persistent_workers(long_folder):
    ds = VocalDataset(long_folder, split=None, target_length=L)
    dl = DataLoader(_EpochProbe(ds), batch_size=1, num_workers=2, persistent_workers=True)
    assert [int(b) for b in dl] == [0] * 4
    ds.set_epoch(3)
    assert [int(b) for b in dl] == [3] * 4

def test_epoch_alone_changes_the_crops(long_folder):
    ds = VocalDataset(long_folder, split=None, target_length=L, seed=3)
    dl = DataLoader(ds, batch_size=4, num_workers=2)   # workers restart each pass
    a = _fingerprints(dl); ds.set_epoch(0); b = _fingerprints(dl); ds.set_epoch(1); c = _fingerprints(dl)
    assert a == b and not set(a) & set(c)

def test_validation_crops_are_deterministic(tmp_path):
    d = tmp_path
    for k in range(8): sf.write(d / f'v{k}.wav', _noise(2.0, seed=10 + k) * np.linspace(0, 1, 2 * SR)[:, None] ** 4, SR)
    v1 = VocalDataset(d, split='valid', valid_ratio=0.5, seed=0)
    v2 = VocalDataset(d, split='valid', valid_ratio=0.5, seed=9, augment=AugmentConfig(p_gain=1, p_invert=1))
    v2.set_epoch(5)
    a = torch.stack([v1[i] for i in range(len(v1))])
    b = torch.cat(list(DataLoader(v2, batch_size=2, num_workers=2)))
    assert torch.equal(a, b)

def test_split_is_stable_and_hash_based(tmp_path):
    known = {'voice/000_bass.wav': split_of('voice/000_bass.wav'), 'a/b/c.flac': split_of('a/b/c.flac')}
    for rel in ('x.wav', 'voice/000_bass.wav', 'a/b/c.flac'):   # independent of PYTHONHASHSEED (not hash())
        h = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], 'big') / 2 ** 64
        assert split_of(rel, 0.3) == ('valid' if h < 0.3 else 'train')
    code = 'from lyracodec.dataset import split_of; print([split_of(r, 0.5) for r in %r])' % sorted(known)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONHASHSEED': '12345', 'PYTHONPATH': str(ROOT)}).stdout
    assert out.strip() == str([split_of(r, 0.5) for r in sorted(known)])
    d = tmp_path / 'a'
    for k in range(40): (d / f'g{k % 3}').mkdir(parents=True, exist_ok=True); sf.write(d / f'g{k % 3}/f{k}.wav', _noise(0.3, seed=k), SR)
    e = tmp_path / 'moved' / 'b'; shutil.copytree(d, e)
    va = {f.rel for f in VocalDataset(d, split='valid', valid_ratio=0.25, target_length=L).files}
    vb = {f.rel for f in VocalDataset(e, split='valid', valid_ratio=0.25, target_length=L, seed=7).files}
    tr = {f.rel for f in VocalDataset(d, split='train', valid_ratio=0.25, target_length=L).files}
    assert va == vb and va and not va & tr and len(va | tr) == 40

def test_no_audible_audio_is_a_clear_error_not_a_hang(tmp_path):
    for k in range(3): sf.write(tmp_path / f'z{k}.wav', np.full((SR, 2), 1e-4, 'float32'), SR)
    ds = VocalDataset(tmp_path, split=None, target_length=L)
    with pytest.raises(ValueError, match='no audible audio'): ds[0]
    with pytest.raises(ValueError, match='no audible audio'): next(iter(DataLoader(ds, num_workers=1)))

def test_clear_errors(faulty, tmp_path):
    with pytest.raises(ValueError, match='multiple of the hop length 2048'): VocalDataset(faulty, target_length=40000)
    with pytest.raises(ValueError, match=r"'valid' split.*no usable audio"):
        VocalDataset(faulty, split='valid', valid_ratio=1e-9)
    with pytest.raises(ValueError, match='no usable audio'): VocalDataset(tmp_path, split=None)
    with pytest.raises(FileNotFoundError, match='nowhere'): VocalDataset(tmp_path / 'nowhere')
    with pytest.raises(ValueError, match='AugmentConfig.p_swap'): AugmentConfig(p_swap=2)

def test_augmentation_inverts_and_swaps_the_same_crop(long_folder):
    plain = VocalDataset(long_folder, split=None, target_length=L, seed=1)
    aug = VocalDataset(long_folder, split=None, target_length=L, seed=1,
                       augment=AugmentConfig(p_gain=0, p_invert=1, p_swap=1))
    torch.testing.assert_close(aug[2], -plain[2].flip(0))
    quiet = VocalDataset(long_folder, split=None, target_length=L, augment=AugmentConfig(gain_db=12, p_gain=1))
    peaks = [float(quiet[i].abs().max()) for i in range(6)]
    assert all(0.95 * 10 ** (-12 / 20) - 1e-6 <= p <= 0.95 + 1e-6 for p in peaks) and min(peaks) < 0.9
    speed = VocalDataset(long_folder, split=None, target_length=L, augment=AugmentConfig(p_speed=1, p_gain=0, p_invert=0, p_swap=0))
    assert all(speed[i].shape == (2, L) for i in range(4))

def test_demo_corpus_uses_every_format_and_clip_lengths(tmp_path):
    a = make_demo_corpus(tmp_path / 'a', minutes=0.7, seed=0)
    files = json.loads((a / DEMO_MANIFEST).read_text())['files']
    assert {Path(f['path']).suffix for f in files} == {'.wav', '.flac', '.ogg', '.mp3'}
    assert all(3.0 <= f['seconds'] <= 6.0 for f in files)
    assert sorted(f['path'] for f in files) == sorted(p.relative_to(a).as_posix() for p in a.rglob('*.*')
                                                      if p.name != DEMO_MANIFEST)
    assert sf.info(str(a / next(f['path'] for f in files if f['path'].endswith('.mp3')))).samplerate == 48000

def test_demo_clips_are_deterministic_by_seed():
    x, y, z = demo_clip(0, 0, 3.0, SR), demo_clip(0, 0, 3.0, SR), demo_clip(0, 1, 3.0, SR)
    assert x.shape == (3 * SR, 2) and np.array_equal(x, y) and not np.array_equal(x, z)
    assert 0.3 < np.abs(x).max() < 1 and not np.array_equal(x[:, 0], x[:, 1])  # stereo placement / reverb

def test_demo_corpus_is_idempotent_and_rebuilds_when_incomplete(tmp_path):
    d = make_demo_corpus(tmp_path / 'd', minutes=0.1, seed=0)
    wav = next(d.rglob('*.wav')); mtime = wav.stat().st_mtime_ns
    make_demo_corpus(d, minutes=0.1, seed=0)
    assert wav.stat().st_mtime_ns == mtime            # complete: nothing rewritten
    (d / DEMO_MANIFEST).unlink()                       # interrupted before the manifest: rebuilt
    make_demo_corpus(d, minutes=0.1, seed=0)
    assert (d / DEMO_MANIFEST).is_file() and wav.stat().st_mtime_ns != mtime
    wav.write_bytes(wav.read_bytes()[:100])            # a damaged file: rebuilt
    make_demo_corpus(d, minutes=0.1, seed=0)
    assert sf.info(str(wav)).frames >= 3 * SR and not list(d.rglob('*.tmp'))

def test_demo_corpus_command(tmp_path):
    r = run_cli('lyracodec_demo_corpus', tmp_path / 'd', '--minutes', '0.05', env={'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert 'files' in r.stdout and (tmp_path / 'd' / DEMO_MANIFEST).is_file()
    (tmp_path / 'f').write_text('a file, not a folder')
    r = run_cli('lyracodec_demo_corpus', tmp_path / 'f', '--minutes', '0.05', env={'PYTHONPATH': str(ROOT)})
    assert r.returncode != 0 and str(tmp_path / 'f') in r.stderr and len(r.stderr.strip().splitlines()) == 1
