import atexit, os, shutil, tempfile
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('WANDB_MODE', 'disabled')
# What the commands cache (the native Snake, compiled windows, the demo corpus) goes to a scratch folder, never to
# the user's ~/.cache/lyracodec; a test that needs its own cache sets LYRACODEC_CACHE itself.
_CACHE = tempfile.mkdtemp(prefix='lyracodec-test-cache-')
os.environ['LYRACODEC_CACHE'] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

# The longest files first (measured on 2 cores: trainer 92 s, browser 71, finetune 54, latent faults 39, native
# library 25, stable-audio 20), so that `pytest -n auto --dist loadfile` never leaves one of them running alone at the
# end; xdist's own order (by number of tests) started them last. Other files keep their order.
LONGEST_FIRST = ('test_trainer.py', 'test_browser.py', 'test_finetune.py', 'test_latent_faults.py', 'test_native_snake.py',
                 'test_stable_audio.py')

def pytest_configure(config):
    if hasattr(config.option, 'loadscopereorder'): config.option.loadscopereorder = False  # keep the order below

def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: tests within a file keep their order

# `-n auto`: one worker more than there are cores, since many tests wait on child processes (JupyterLab and Chromium,
# DDP ranks, the commands). Measured on 2 cores: 3 workers 200 / 203 s, 2 workers 218 / 218 s, 4 workers 227 s.
def pytest_xdist_auto_num_workers(config):
    return (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1) + 1
