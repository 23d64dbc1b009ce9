"End-to-end tests of lyracodec_encode / _decode / _reconstruct / _eval, including each kind of bad input."
import csv, math, os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import ROOT, run_cli, save_two_tiny_models
from lyracodec.codec import encode_main, decode_main, reconstruct_main, load_latents
from lyracodec.metrics import eval_main

SR = 44100
ENV = {'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'disabled'}

def _tone(seconds: float, channels: int=2, f: float=220.0, sr: int=SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * f * (k + 1) * t) for k in range(channels)], 1).astype(np.float32)  # [T, C]

@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A tiny random model, a second model of another config, and a folder of inputs."
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('codec')
    save_two_tiny_models(d)
    (d / 'in' / 'sub').mkdir(parents=True)
    sf.write(d / 'in' / 'a.wav', _tone(1.0), SR, subtype='PCM_16')
    sf.write(d / 'in' / 'sub' / 'b.flac', _tone(0.7, channels=1, sr=22050), 22050)   # mono at another rate, in a subfolder
    return d

def _files(d: Path) -> list:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob('*') if p.is_file()) if d.exists() else []

def test_round_trip_through_console_scripts(work, tmp_path):
    m = work / 'model'
    r = run_cli('lyracodec_encode', work / 'in', '--model', m, '-o', tmp_path / 'lat', '--dtype', 'float16', env=ENV)
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / 'lat') == ['a.lyra', 'sub/b.lyra']
    z, meta = load_latents(tmp_path / 'lat' / 'sub' / 'b.lyra')
    assert meta['channels'] == 1 and meta['source_sample_rate'] == 22050 and meta['dtype'] == 'float16'
    assert abs(meta['length'] - 0.7 * SR) <= 2, meta['length']
    assert z.shape == (1, 64, math.ceil(meta['length'] / 2048))
    r = run_cli('lyracodec_decode', tmp_path / 'lat', '--model', m, '-o', tmp_path / 'dec', env=ENV)
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / 'dec') == ['a.wav', 'sub/b.wav']
    assert sf.info(tmp_path / 'dec' / 'a.wav').frames == SR and sf.info(tmp_path / 'dec' / 'a.wav').channels == 2
    assert sf.info(tmp_path / 'dec' / 'sub' / 'b.wav').channels == 1          # mono source -> mono output
    r = run_cli('lyracodec_reconstruct', work / 'in', '--model', m, '-o', tmp_path / 'rec', env=ENV)
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / 'rec') == ['a.wav', 'sub/b.wav']
    r = run_cli('lyracodec_eval', work / 'in', tmp_path / 'rec', '--csv', tmp_path / 'm.csv', env=ENV)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / 'm.csv')))
    assert [row['file'] for row in rows] == ['a.wav', 'sub/b.flac', 'mean']
    assert all(math.isfinite(float(row['si_sdr_db'])) for row in rows)
    assert 'si_sdr_db' in r.stdout and 'mean' in r.stdout

def test_eval_with_model_scores_what_reconstruct_writes(work, tmp_path, capsys, monkeypatch):
    "`lyracodec_eval REF --model M` gives the table of `lyracodec_reconstruct` then `lyracodec_eval REF REC`, and leaves no temp file."
    m, scratch = work / 'model', tmp_path / 'scratch'
    scratch.mkdir(); monkeypatch.setenv('TMPDIR', str(scratch)); monkeypatch.setattr('tempfile.tempdir', None)
    assert reconstruct_main([str(work / 'in'), '--model', str(m), '-o', str(tmp_path / 'rec'), '-q']) == 0
    assert eval_main([str(work / 'in'), str(tmp_path / 'rec'), '--csv', str(tmp_path / 'files.csv'), '-q']) == 0
    assert eval_main([str(work / 'in'), '--model', str(m), '--csv', str(tmp_path / 'model.csv'), '-q']) == 0
    by_files, by_model = (list(csv.DictReader(open(tmp_path / f))) for f in ('files.csv', 'model.csv'))
    assert [r['file'] for r in by_model] == ['a.wav', 'sub/b.flac', 'mean']
    for a, b in zip(by_files, by_model):
        assert a['file'] == b['file'] and all(math.isclose(float(a[k]), float(b[k]), rel_tol=1e-9, abs_tol=1e-9)
                                              for k in a if k != 'file'), (a, b)
    assert list(scratch.iterdir()) == []                              # the reconstructions were temporary
    capsys.readouterr()
    for argv, says in ((['--csv', str(tmp_path / 'x.csv')], 'give ESTIMATE'),
                       ([str(tmp_path / 'rec'), '--model', str(m), '--csv', str(tmp_path / 'x.csv')], 'not both'),
                       (['--model', str(work / 'nothing'), '--csv', str(tmp_path / 'x.csv')], 'cannot load model'),
                       (['--model', str(m), '--csv', str(tmp_path / 'model.csv')], 'already exists')):
        assert eval_main([str(work / 'in'), *argv, '-q']) == 2
        _one_error_line(capsys.readouterr().err, says)
    assert not (tmp_path / 'x.csv').exists()

def _one_error_line(err: str, name: str) -> None:
    lines = [l for l in err.splitlines() if 'error:' in l]
    assert len(lines) == 1 and name in lines[0], err

def test_missing_input(work, tmp_path, capsys):
    rc = encode_main([str(work / 'nope.wav'), '--model', str(work / 'model'), '-o', str(tmp_path / 'o'), '-q'])
    assert rc != 0
    _one_error_line(capsys.readouterr().err, 'nope.wav')
    assert _files(tmp_path / 'o') == []

def test_unsupported_and_corrupt_audio_do_not_stop_the_folder(work, tmp_path, capsys):
    src = tmp_path / 'src'; src.mkdir()
    sf.write(src / 'good.wav', _tone(0.5), SR)
    (src / 'deep').mkdir()
    (src / 'deep' / 'corrupt.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEjunk' * 10)
    (src / 'empty.flac').write_bytes(b'')
    rc = reconstruct_main([str(src), '--model', str(work / 'model'), '-o', str(tmp_path / 'o'), '-q'])
    err = capsys.readouterr().err
    assert rc == 1
    assert _files(tmp_path / 'o') == ['good.wav']                     # no partial output for the bad ones
    assert not (tmp_path / 'o' / 'deep').exists()                     # nor an empty folder
    assert any('corrupt.wav' in l for l in err.splitlines() if 'error:' in l)
    assert any('empty.flac' in l for l in err.splitlines() if 'error:' in l)
    assert '1 file(s) done, 2 failed' in err
    (src / 'notes.txt').write_text('not audio')
    rc = encode_main([str(src / 'notes.txt'), '--model', str(work / 'model'), '-o', str(tmp_path / 'o2'), '-q'])
    assert rc != 0
    _one_error_line(capsys.readouterr().err, 'notes.txt')
    assert _files(tmp_path / 'o2') == []

def test_latents_from_another_model(work, tmp_path, capsys):
    assert encode_main([str(work / 'in' / 'a.wav'), '--model', str(work / 'model'), '-o', str(tmp_path / 'lat'), '-q']) == 0
    capsys.readouterr()
    rc = decode_main([str(tmp_path / 'lat'), '--model', str(work / 'other'), '-o', str(tmp_path / 'dec'), '-q'])
    assert rc != 0
    err = capsys.readouterr().err
    _one_error_line(err, 'a.lyra')
    assert 'fingerprint' in err
    assert _files(tmp_path / 'dec') == []

def test_not_a_latent_file(work, tmp_path, capsys):
    (tmp_path / 'fake.lyra').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{}garbage')
    rc = decode_main([str(tmp_path / 'fake.lyra'), '--model', str(work / 'model'), '-o', str(tmp_path / 'dec'), '-q'])
    assert rc != 0
    _one_error_line(capsys.readouterr().err, 'fake.lyra')
    assert _files(tmp_path / 'dec') == []

def test_unwritable_output_folder(work, tmp_path, capsys):
    blocker = tmp_path / 'file'; blocker.write_text('x')               # a folder cannot be made under a file
    rc = encode_main([str(work / 'in'), '--model', str(work / 'model'), '-o', str(blocker / 'out'), '-q'])
    assert rc != 0
    _one_error_line(capsys.readouterr().err, str(blocker / 'out'))
    rc = eval_main([str(work / 'in'), str(work / 'in'), '--csv', str(blocker / 'out' / 'm.csv'), '-q'])
    assert rc != 0
    _one_error_line(capsys.readouterr().err, str(blocker / 'out'))

def test_bad_model_folder(work, tmp_path, capsys):
    rc = encode_main([str(work / 'in'), '--model', str(tmp_path), '-o', str(tmp_path / 'o'), '-q'])
    assert rc != 0
    _one_error_line(capsys.readouterr().err, 'config.json')

def test_eval_counts_unmatched_and_corrupt(work, tmp_path, capsys):
    ref, est = tmp_path / 'ref', tmp_path / 'est'
    ref.mkdir(); est.mkdir()
    for name in ('x.wav', 'y.wav', 'z.wav'): sf.write(ref / name, _tone(0.5), SR)
    sf.write(est / 'x.wav', _tone(0.5) * 0.5, SR)
    (est / 'y.wav').write_bytes(b'garbage')
    rc = eval_main([str(ref), str(est), '--csv', str(tmp_path / 'm.csv'), '-q'])
    err = capsys.readouterr().err
    assert rc == 1
    assert any('z.wav' in l for l in err.splitlines() if 'error:' in l)
    assert any('y.wav' in l for l in err.splitlines() if 'error:' in l)
    assert '1 pair(s) evaluated, 2 failed' in err
    rows = list(csv.DictReader(open(tmp_path / 'm.csv')))
    assert [r['file'] for r in rows] == ['x.wav', 'mean'] and float(rows[0]['si_sdr_db']) > 60

def test_packed_engine_equals_the_model(work, tmp_path, capsys, monkeypatch):
    "The CPU default (the packed engine) writes what `--engine model` writes, to float rounding, native Snake or not."
    monkeypatch.setenv('LYRACODEC_CACHE', str(tmp_path / 'cache'))  # the native Snake is built there
    m, outs = work / 'model', {}
    for engine, comp in (('model', 'off'), ('packed', 'off'), ('auto', 'auto')):
        lat, wav = tmp_path / f'lat-{engine}', tmp_path / f'wav-{engine}'
        assert encode_main([str(work / 'in'), '--model', str(m), '-o', str(lat), '-q', '--precision', 'fp32',
                            '--engine', engine, '--compile', comp]) == 0
        assert decode_main([str(lat), '--model', str(m), '-o', str(wav), '-q', '--precision', 'fp32',
                            '--engine', engine, '--compile', comp]) == 0
        outs[engine] = load_latents(lat / 'a.lyra')[0], sf.read(wav / 'a.wav')[0]
    err = capsys.readouterr().err
    assert 'warning' not in err, err  # the native build worked (else it would warn and run eagerly)
    assert [p.suffix for p in (tmp_path / 'cache' / 'native').iterdir()] == ['.so'], 'no native Snake in the LyraCodec cache'
    z0, y0 = outs['model']
    for engine in ('packed', 'auto'):
        z, y = outs[engine]
        assert (z - z0).abs().max() <= 1e-5 * z0.abs().max(), engine
        assert np.abs(y - y0).max() <= 1e-5 * np.abs(y0).max() + 1e-7, engine

def test_packed_engine_needs_a_cpu(work, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        encode_main([str(work / 'in'), '--model', str(work / 'model'), '-o', str(tmp_path / 'o'), '--engine', 'fast'])
    assert e.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()
    from lyracodec.codec import engine_for
    with pytest.raises(ValueError, match='--engine packed runs on the CPU'): engine_for('packed', 'cuda')

def test_loaded_model_lives_where_its_weights_were_read(work, monkeypatch):
    "`load_pretrained(map_location=D)` gives a model on D (it used to copy a GPU read back into CPU weights): checked with 'meta'."
    import safetensors.torch
    from lyracodec.vae import load_pretrained
    read = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, 'load_file', lambda path, device='cpu': {k: v.to('meta') for k, v in read(path).items()})
    m = load_pretrained(work / 'model', map_location='meta')
    assert {p.device.type for p in m.parameters()} == {'meta'}

def test_packed_commands_release_the_model_weights(work):
    "With the packed engine the model's own weights are freed (the engine has its copy); with `--engine model` they stay."
    import argparse
    from lyracodec.codec import add_inference_args, load_for_inference
    p, said = argparse.ArgumentParser(), []
    add_inference_args(p)
    for engine, released in (('packed', True), ('model', False)):
        a = p.parse_args(['--model', str(work / 'model'), '--engine', engine, '--precision', 'fp32'])
        m = load_for_inference(a, said.append, said.append)
        assert (sum(q.numel() for q in m.parameters()) == 0) == released, engine
        assert (a.packed is not None) == released and m.hop_length == 2048
    assert said == []
