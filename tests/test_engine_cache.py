"The packed-engine cache of the commands: a second command maps the packed weights; a model saved again, a damaged entry, a cache turned off or unwritable."
import os, time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import lyracodec.codec as codec
from lyracodec.codec import encode_main, decode_main, load_latents
from lyracodec.vae import VAE, VAEConfig, save_pretrained

SR = 44100

@pytest.fixture
def work(tmp_path, monkeypatch):
    "A tiny random model, one stereo file, and this test's own LyraCodec cache."
    torch.set_num_threads(1)
    monkeypatch.setenv('LYRACODEC_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('LYRACODEC_ENGINE_CACHE', raising=False)
    torch.manual_seed(0)
    save_pretrained(VAE(VAEConfig.preset('tiny')).eval(), tmp_path / 'model')
    (tmp_path / 'in').mkdir()
    t = np.arange(SR) / SR
    sf.write(tmp_path / 'in' / 'a.wav', np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], 1), SR)
    return tmp_path

def _encode(d: Path, out: str, *extra) -> torch.Tensor:
    assert encode_main([str(d / 'in'), '--model', str(d / 'model'), '-o', str(d / out), '-q', '--compile', 'off', *extra]) == 0
    return load_latents(d / out / 'a.lyra')[0]

def _entries(d: Path) -> list:
    return sorted((d / 'cache' / 'engines').glob('packed-*.safetensors'))

def _no_loading(monkeypatch):
    "Make reading the model's weights fail: a command that still succeeds ran from the cache."
    def refuse(*a, **k): raise AssertionError('the model was loaded, not its kept engine')
    monkeypatch.setattr(codec, 'load_pretrained', refuse)

@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_second_command_maps_the_kept_engine(work, monkeypatch, capsys, precision):
    z1 = _encode(work, 'lat1', '--precision', precision)
    assert len(_entries(work)) == 1
    _no_loading(monkeypatch)
    z2 = _encode(work, 'lat2', '--precision', precision)
    assert torch.equal(z1, z2)  # the same weights, the same layout: bit for bit
    assert decode_main([str(work / 'lat2'), '--model', str(work / 'model'), '-o', str(work / 'dec'), '-q', '--compile', 'off',
                        '--precision', precision]) == 0
    assert sf.info(work / 'dec' / 'a.wav').frames == SR
    assert len(_entries(work)) == 1 and 'warning' not in capsys.readouterr().err

def test_model_saved_again_is_packed_again(work):
    "A model saved into the same folder (a fine-tuned export) must not run with the old model's kept engine."
    z_old = _encode(work, 'lat1', '--precision', 'fp32')
    time.sleep(0.02)
    torch.manual_seed(1)
    save_pretrained(VAE(VAEConfig.preset('tiny')).eval(), work / 'model')
    z_new = _encode(work, 'lat2', '--precision', 'fp32')
    z_ref = _encode(work, 'lat3', '--precision', 'fp32', '--engine', 'model')
    assert not torch.allclose(z_new, z_old)
    assert (z_new - z_ref).abs().max() <= 1e-5 * z_ref.abs().max()
    assert len(_entries(work)) == 2  # one per version of the files

def test_damaged_entry_is_packed_again(work, monkeypatch):
    z1 = _encode(work, 'lat1', '--precision', 'fp32')
    (entry,) = _entries(work)
    entry.write_bytes(entry.read_bytes()[:len(entry.read_bytes()) // 2])  # a truncated file
    z2 = _encode(work, 'lat2', '--precision', 'fp32')
    assert torch.equal(z1, z2)
    (again,) = _entries(work)
    _no_loading(monkeypatch)  # written anew, whole: the next command maps it
    assert torch.equal(_encode(work, 'lat3', '--precision', 'fp32'), z1)

def test_cache_turned_off(work, monkeypatch):
    monkeypatch.setenv('LYRACODEC_ENGINE_CACHE', '0')
    _encode(work, 'lat', '--precision', 'fp32')
    assert _entries(work) == []

def test_unwritable_cache_is_no_error(work, monkeypatch, capsys):
    "A cache folder that cannot be created (its path is a file) costs the packing each time, nothing else."
    (work / 'blocked').write_text('a file where the cache folder would be')
    monkeypatch.setenv('LYRACODEC_CACHE', str(work / 'blocked'))
    z1 = _encode(work, 'lat1', '--precision', 'fp32')
    z2 = _encode(work, 'lat2', '--precision', 'fp32')
    assert torch.equal(z1, z2) and capsys.readouterr().err.count('error') == 0
    assert (work / 'blocked').read_text() == 'a file where the cache folder would be'

def test_bf16_fault_with_a_kept_engine_falls_back_to_fp32(work, monkeypatch, capsys):
    "`--precision auto` on a CPU whose bf16 matmuls are wrong runs fp32: from the model's weights, though a bf16 engine was kept."
    if codec.compute_dtype('auto', torch.device('cpu')) is not torch.bfloat16: pytest.skip('auto is fp32 on this CPU')
    _encode(work, 'lat1', '--precision', 'bf16')
    assert len(_entries(work)) == 1
    monkeypatch.setattr(codec.PackedCodec, 'bf16_fault', lambda self, tolerance=0.02: 'bf16 matmuls are wrong (simulated)')
    z = _encode(work, 'lat2', '--precision', 'auto')
    assert 'using fp32 instead' in capsys.readouterr().err
    z_ref = _encode(work, 'lat3', '--precision', 'fp32', '--engine', 'model')
    assert (z - z_ref).abs().max() <= 1e-5 * z_ref.abs().max()
    assert len(_entries(work)) == 2  # the fp32 engine is kept too

def test_reach_is_kept(work, monkeypatch):
    "The commands measure the model's reach once: later ones read it from the cache; a damaged file is measured again."
    cfg = VAEConfig.preset('tiny')
    reach = codec.kept_reach(cfg)
    path = work / 'cache' / 'checks' / 'reach.json'
    assert reach == codec.receptive_frames(cfg) and path.is_file()
    monkeypatch.setattr(codec, '_REACH', {})
    def refuse(*a): raise AssertionError('measured again')
    with monkeypatch.context() as m:
        m.setattr(codec, '_reach_grad', refuse)
        assert codec.kept_reach(cfg) == reach
    path.write_text('{"not": "json"')
    monkeypatch.setattr(codec, '_REACH', {})
    assert codec.kept_reach(cfg) == reach and codec._reach_key(cfg) in path.read_text()
