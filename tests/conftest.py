import atexit, os, shutil, tempfile
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('WANDB_MODE', 'disabled')
# What the commands cache (the native Snake, compiled windows, the demo corpus) goes to a scratch folder, never to
# the user's ~/.cache/lyracodec; a test that needs its own cache sets LYRACODEC_CACHE itself.
_CACHE = tempfile.mkdtemp(prefix='lyracodec-test-cache-')
os.environ['LYRACODEC_CACHE'] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
