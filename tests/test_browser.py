"""Real-browser checks: the explorer in a default JupyterLab driven by headless Chromium, and the processed docs pages.

Needs Debian's `chromium` (apt-get install -y chromium; LYRACODEC_CHROMIUM names another) and Python `playwright`
(a dev extra; its own browser download is not used). Without them the tests are skipped with a message; under
`.ci/run` (CI=1) a missing browser is a failure, never a skip. LYRACODEC_SHOTS=DIR (new or empty) keeps the page
screenshots and every explorer redraw with its fresh render."""
import base64, io, json, os, re, shutil, socket, subprocess, time, urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, BIN, proc_nbs

CHROMIUM = Path(os.environ.get('LYRACODEC_CHROMIUM', '/usr/bin/chromium'))
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
IN_CI = os.environ.get('CI') == '1'   # set by .ci/run
DOCS_PAGES = ['index', '00_snake', '03_vae', '06_codec', '08_explore']
SHOTS = Path(os.environ['LYRACODEC_SHOTS']) if os.environ.get('LYRACODEC_SHOTS') else None

QUARTO_BODY_PX = 800   # Quarto's default grid: the body column of a page is 800 px wide

@pytest.fixture(scope='module')
def shots():
    "LYRACODEC_SHOTS=DIR keeps the screenshots and every redraw: DIR must be new or empty (nothing is overwritten)."
    if SHOTS is None: return None
    if SHOTS.exists() and (not SHOTS.is_dir() or any(SHOTS.iterdir())):
        pytest.fail(f'LYRACODEC_SHOTS={SHOTS}: not an empty folder; give a new one (nothing there is overwritten)')
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS

def _require_browser():
    "Skip (with the reason) when Chromium or Playwright is missing; under CI, fail instead."
    missing = []
    if not CHROMIUM.exists(): missing.append(f'{CHROMIUM} (apt-get install -y chromium)')
    try: import playwright.sync_api  # noqa: F401
    except ImportError: missing.append('the playwright package (pip install playwright)')
    if missing:
        msg = 'real-browser test needs ' + ' and '.join(missing)
        if IN_CI: pytest.fail(msg + ': .ci/run installs both, so this is a broken CI setup')
        pytest.skip(msg)

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    "Headless Debian Chromium through Playwright, with a fresh profile."
    _require_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp('chromium-profile')), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={'width': 1400, 'height': 1000})
        yield ctx
        ctx.close()

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A default JupyterLab from the venv on 127.0.0.1 with a token, serving a copy of 08_explore."
    _require_browser()
    root = tmp_path_factory.mktemp('lab')
    shutil.copy(ROOT / 'nbs' / '08_explore.ipynb', root / '08_explore.ipynb')
    port, token = _free_port(), base64.b32encode(os.urandom(10)).decode().lower()
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}   # the kernel gets matplotlib's inline backend
    env.update(JUPYTER_CONFIG_DIR=str(root / '.config'), JUPYTER_DATA_DIR=str(root / '.data'),
               JUPYTER_RUNTIME_DIR=str(root / '.runtime'), IPYTHONDIR=str(root / '.ipython'),
               LYRACODEC_CACHE=str(root / '.cache'))
    log = open(root / 'lab.log', 'w')
    proc = subprocess.Popen([str(BIN / 'jupyter-lab'), '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
                             '--LabApp.expose_app_in_browser=True'],   # window.jupyterapp: Lab's own commands
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except OSError:
                if proc.poll() is not None: break
                time.sleep(0.5)
        else: pytest.fail('JupyterLab did not answer within 60 s:\n' + (root / 'lab.log').read_text()[-3000:])
        assert proc.poll() is None, 'JupyterLab exited:\n' + (root / 'lab.log').read_text()[-3000:]
        yield dict(url=url, token=token, runtime=root / '.runtime', root=root)
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()

# --- the explorer in JupyterLab ----------------------------------------------------------------------------------

_NB = 'window.jupyterapp.shell.currentWidget'
_KERNEL = f'{_NB}.sessionContext.session.kernel'

class KernelSide:
    "A second client on the notebook's kernel (its connection file), to ask what the explorer holds."
    def __init__(self, connection_file: Path):
        from jupyter_client import BlockingKernelClient
        self.kc = BlockingKernelClient(connection_file=str(connection_file))
        self.kc.load_connection_file(); self.kc.start_channels(); self.kc.wait_for_ready(timeout=60)

    def eval(self, expr: str):
        "Value of a Python expression that yields a JSON string, evaluated in the notebook's namespace."
        msg_id = self.kc.execute('', silent=True, user_expressions={'v': expr})
        while True:
            reply = self.kc.get_shell_msg(timeout=120)
            if reply['parent_header'].get('msg_id') == msg_id: break
        v = reply['content']['user_expressions']['v']
        assert v['status'] == 'ok', v
        return json.loads(eval(v['data']['text/plain']))   # the repr of a str

    def run(self, code: str):
        "Run `code` on the main shell as a cell would, and wait until it is done."
        msg_id = self.kc.execute(code, silent=False, store_history=False)
        while True:
            reply = self.kc.get_shell_msg(timeout=120)
            if reply['parent_header'].get('msg_id') == msg_id: break
        assert reply['content']['status'] == 'ok', reply['content']

    def fresh_render(self) -> list:
        """PNG bytes of what `ex.render()` shows when run on the main shell with nothing else running: the pictures
        it displays (an explorer drawing into Output widgets) and those its Image widgets hold after it."""
        while True:   # forget what the kernel published before
            try: self.kc.get_iopub_msg(timeout=0.1)
            except Exception: break
        msg_id = self.kc.execute('ex.render(); None', silent=False, store_history=False)
        pngs = []
        while True:
            m = self.kc.get_iopub_msg(timeout=120)
            if m['parent_header'].get('msg_id') != msg_id: continue
            if m['msg_type'] in ('display_data', 'update_display_data'):
                pngs += [base64.b64decode(v) for k, v in m['content']['data'].items() if k.startswith('image/')]
            if m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle': break
        return pngs + [base64.b64decode(p) for p in self.eval('_lyra_images()')]

    def close(self): self.kc.stop_channels()

def _png_pixels(png: bytes):
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB')).astype(np.int16)

def _same_picture(a: bytes, b: bytes) -> str:
    "'' when the two PNGs show the same picture (same size, at most 0.1 % of pixels off by > 32 levels), else why not."
    pa, pb = _png_pixels(a), _png_pixels(b)
    if pa.shape != pb.shape: return f'size {pa.shape[1]}x{pa.shape[0]} != fresh {pb.shape[1]}x{pb.shape[0]}'
    off = float(((abs(pa - pb)).max(-1) > 32).mean())
    return '' if off <= 0.001 else f'{off:.1%} of pixels differ from a fresh render'

# (control, value): 20 changes, each one a new value, through the widgets a user clicks and types in
REDRAWS = [('mix', 0.5), ('clip A', 'high chord'), ('shift 0', 1.5), ('clip B', 'low chord'), ('mix', 0.25),
           ('clip A', 'low chord'), ('shift 1', -2.0), ('mix', 1.0), ('shift 0', -1.0), ('clip A', 'high chord'),
           ('mix', 0.0), ('clip B', 'high chord'), ('shift 1', 0.5), ('clip A', 'low chord'), ('shift 0', 0.0),
           ('mix', 0.75), ('clip A', 'high chord'), ('shift 1', 3.0), ('clip B', 'low chord'), ('mix', 0.0)]

def _expect(settings: list, control: str, value) -> list:
    "The settings after one change."
    a, b, mix, shifts = settings[0], settings[1], settings[2], list(settings[3])
    if control == 'clip A': a = value
    elif control == 'clip B': b = value
    elif control == 'mix': mix = value
    else: shifts[int(control[-1])] = value
    return [a, b, mix, shifts]

def _set_control(page, widget, control: str, value):
    "Change one explorer control as a user does: pick from a dropdown, or type into a slider's readout."
    if control.startswith('clip'):
        widget.locator('.widget-dropdown select').nth(0 if control == 'clip A' else 1).select_option(value)
        return
    slider = widget.locator('.widget-hslider').nth({'mix': 0, 'shift 0': 1, 'shift 1': 2}[control])
    readout = slider.locator('.widget-readout')
    readout.click(); page.keyboard.press('Control+A'); page.keyboard.type(f'{value}'); page.keyboard.press('Enter')

def _wait_idle(page, timeout_s: float=120):
    "Until the kernel has been idle for half a second."
    quiet, t0 = 0, time.time()
    while quiet < 3:
        assert time.time() - t0 < timeout_s, 'the kernel stayed busy'
        quiet = quiet + 1 if page.evaluate(f'{_KERNEL}.status') == 'idle' else 0
        time.sleep(0.2)

def _image_bytes(page, img) -> bytes:
    b64 = img.evaluate("""async el => { const b = await (await fetch(el.src)).arrayBuffer();
                          let s = ''; new Uint8Array(b).forEach(c => s += String.fromCharCode(c)); return btoa(s); }""")
    return base64.b64decode(b64)

def _settled_view(page, widget, quiet_s: float=1.0, timeout_s: float=60) -> tuple:
    "(PNG bytes of the explorer's one image or None, how many images, visible players) once unchanged for `quiet_s`."
    last, since, t0 = None, time.time(), time.time()
    while True:
        imgs = widget.locator('img')
        n = imgs.count()
        try: view = (_image_bytes(page, imgs.first) if n == 1 else None, n, widget.locator('audio:visible').count())
        except Exception: view = None   # the image was swapped while it was read
        if view != last: last, since = view, time.time()
        elif view is not None and time.time() - since >= quiet_s: return view
        if time.time() - t0 > timeout_s: return last or (None, -1, -1)
        time.sleep(0.15)

# An explorer's Image widgets' pictures (an explorer that draws widget values only)
IMAGES = """
def _lyra_images():
    import base64, ipywidgets
    pngs, todo = [], [ex.widget]
    while todo:
        w = todo.pop()
        if isinstance(w, ipywidgets.Image): pngs.append(base64.b64encode(w.value).decode())
        todo += list(getattr(w, 'children', ()))
    return json.dumps(pngs)
"""

def test_explorer_redraws_cleanly_in_jupyterlab(lab, browser, shots):
    """Run 08_explore in JupyterLab (default settings: widget comms over kernel subshells), change its controls 20
    times as a user does; each redrawn view must match a fresh render of the same settings, drawn by `ex.render()`
    run as an ordinary cell (the main shell), in image size and pixels, with one player per spectrogram row."""
    page = browser.new_page()
    t_start = time.time()
    page.goto(f"{lab['url']}/lab/tree/08_explore.ipynb?token={lab['token']}")
    page.wait_for_function(f"(() => {{ try {{ return {_KERNEL}.connectionStatus === 'connected' && {_KERNEL}.status === 'idle' }}"
                           " catch (e) { return false } })()", timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")   # Run > Run All Cells
    page.wait_for_function(f"""(() => {{ const cells = {_NB}.content.widgets.filter(c => c.model.type === 'code');
                               return cells.every(c => c.model.executionCount) }})()""", timeout=180_000)
    _wait_idle(page)
    assert page.locator('[data-mime-type="application/vnd.jupyter.error"]').count() == 0, 'a cell failed'
    cell = page.locator('.jp-CodeCell').filter(has_text='ex = Explorer(model, clips')
    cell.scroll_into_view_if_needed()
    widget = cell.locator('.jp-OutputArea-output .widget-vbox').first
    widget.locator('img').first.wait_for(timeout=60_000)
    kid = page.evaluate(f'{_KERNEL}.id')
    kernel = KernelSide(lab['runtime'] / f'kernel-{kid}.json')
    try:
        # the setting under test: JupyterLab 4.6's default sends widget messages to a kernel subshell
        comms = page.evaluate("""async () => { const s = await window.jupyterapp.serviceManager.settings.fetch(
                                 '@jupyterlab/apputils-extension:kernels-settings'); return (s.settings || {}).commsOverSubshells ?? s.schema.properties.commsOverSubshells.default }""")
        features = page.evaluate(f'(async () => (await {_KERNEL}.info).supported_features || [])()')
        assert comms != 'disabled' and 'kernel subshells' in features, (
            f"JupyterLab's 'Kernel Comms over subshells' is {comms!r} and the kernel offers {features}: this test needs "
            "JupyterLab 4.6's default and a kernel with subshells (ipykernel >= 7, as the dev extras install)")
        state = "json.dumps([ex.clip_a.value, ex.clip_b.value, round(ex.mix.value, 2), [round(s.value, 2) for s in ex.shifts]])"
        kernel.run('import json\n' + IMAGES)
        expected, rendered = kernel.eval(state), kernel.eval('json.dumps(id(ex.last))')
        clean, problems = 0, []
        for i, (control, value) in enumerate(REDRAWS, 1):
            expected = _expect(expected, control, value)
            _set_control(page, widget, control, value)
            # the widget redraws on a kernel subshell; meanwhile cells run on the main shell, as when the user (or
            # this test) asks the kernel something: here, whether the redraw is done (`ex.last` is replaced at its end)
            t0 = time.time()
            while kernel.eval('json.dumps(id(ex.last))') == rendered:
                assert time.time() - t0 < 60, f'redraw {i} ({control} -> {value}) did not finish within 60 s'
                time.sleep(0.05)
            shown, n_img, players = _settled_view(page, widget)
            settings, rows = kernel.eval(state), kernel.eval('json.dumps(len(ex.last))')
            fresh = kernel.fresh_render()
            rendered = kernel.eval('json.dumps(id(ex.last))')
            why = ''
            if settings != expected: why = f'the kernel has {settings}, the page was set to {expected}'
            elif n_img != 1: why = f'{n_img} images in the explorer'
            elif len(fresh) != 1: why = f'a fresh render made {len(fresh)} images'
            else: why = _same_picture(shown, fresh[0])
            if not why and players != rows: why = f'{players} players visible for {rows} spectrograms'
            if why: problems.append(f'redraw {i} ({control} -> {value}): {why}')
            else: clean += 1
            if shots:   # every redraw and its fresh render, for a look
                for tag, png in (('shown', shown), ('fresh', fresh[0] if fresh else None)):
                    if png: (shots / f'redraw{i:02d}-{tag}.png').write_bytes(png)
        print(f'\nexplorer redraws clean in JupyterLab: {clean} of {len(REDRAWS)} ({time.time() - t_start:.0f} s)')
        assert clean == len(REDRAWS), f'{clean} of {len(REDRAWS)} redraws clean:\n' + '\n'.join(problems)
    finally:
        kernel.close(); page.close()

# --- the processed docs pages ------------------------------------------------------------------------------------

def _quarto_options(cell) -> dict:
    "The cell's `#| key: value` options (Quarto's syntax), as strings."
    opts = {}
    for line in cell.source.splitlines():
        m = re.match(r'#\|\s*([\w-]+)\s*:\s*(.*)', line)
        if m: opts[m[1]] = m[2].strip()
        elif line.strip(): break
    return opts

def _render_html(nb_path: Path, out: Path) -> Path:
    """HTML of a processed notebook, the way Quarto treats it: raw front matter and `include: false` cells dropped,
    `echo: false` hides the code, `output: false` the outputs; no prompts; the page body 800 px wide as Quarto's."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(nb_path, as_version=4)
    cells = []
    for c in nb.cells:
        if c.cell_type == 'raw': continue
        opts = _quarto_options(c) if c.cell_type == 'code' else {}
        if opts.get('include') == 'false': continue
        if opts.get('output') == 'false': c.outputs = []
        if opts.get('echo') == 'false': c.metadata.setdefault('tags', []).append('remove_input')
        cells.append(c)
    nb.cells = cells
    from traitlets.config import Config
    cfg = Config({'TagRemovePreprocessor': {'enabled': True, 'remove_input_tags': {'remove_input'}}})
    ex = HTMLExporter(config=cfg, template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = ex.from_notebook_node(nb)
    body = body.replace('</head>', f'<style>body {{ max-width: {QUARTO_BODY_PX}px; margin: 0 auto; }}</style></head>', 1)
    dest = out / f'{nb_path.stem}.html'; dest.write_text(body)
    return dest

@pytest.fixture(scope='module')
def docs_html(tmp_path_factory, shots):
    "nbdev_proc_nbs (as the site build runs it, a stub `quarto` first on PATH) and the five pages rendered to HTML."
    _require_browser()
    tmp = tmp_path_factory.mktemp('docs')
    proc = proc_nbs(tmp, timeout=600)
    out = shots or tmp / 'html'; out.mkdir(parents=True, exist_ok=True)
    return {name: _render_html(proc / f'{name}.ipynb', out) for name in DOCS_PAGES}

# figures (page images), players and the explorer's static view each page must show
EXPECT = {'index': (0, 0), '00_snake': (1, 0), '03_vae': (1, 1), '06_codec': (1, 0), '08_explore': (1, 3)}
SMALLEST_PT = 7   # the house style's smallest text (tick labels), points

def _image_dpi(data: bytes) -> float:
    "The resolution a PNG or JPEG records (matplotlib writes the figure's dpi), 0 if none."
    from PIL import Image
    return float((Image.open(io.BytesIO(data)).info.get('dpi') or (0,))[0])

@pytest.mark.parametrize('name', DOCS_PAGES)
def test_docs_page_shows_figures_and_players(docs_html, browser, name):
    "Each processed page, opened in Chromium and screenshotted: figures load at a legible scale, players can play."
    page = browser.new_page()
    try:
        page.goto(docs_html[name].as_uri()); page.wait_for_load_state('load')
        page.screenshot(path=str(docs_html[name].with_suffix('.png')), full_page=True)
        figures, players = EXPECT[name]
        imgs = page.locator('.jp-OutputArea-output img')
        assert imgs.count() >= figures, f'{name}: {imgs.count()} figures, expected at least {figures}'
        for k in range(imgs.count()):
            img = imgs.nth(k)
            img.scroll_into_view_if_needed()
            nw, w = img.evaluate('i => i.complete && i.naturalWidth'), img.bounding_box()['width']
            assert nw, f'{name}: figure {k + 1} is a broken image'
            dpi = _image_dpi(_image_bytes(page, img))
            assert dpi, f'{name}: figure {k + 1} records no resolution (saved outside the house style)'
            # the house style's smallest text is 7 pt: 7/72 inch at the figure's dpi, scaled as the page shows it
            px = SMALLEST_PT / 72 * dpi * w / nw
            assert px >= 8, (f'{name}: figure {k + 1} ({nw} px at {dpi:.0f} dpi, shown {w:.0f} px wide): '
                             f'its {SMALLEST_PT}-point text is {px:.1f} px high at 100 % zoom, under 8 px')
        page.wait_for_function("[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)", timeout=30_000)
        durations = page.evaluate("[...document.querySelectorAll('audio')].map(a => a.duration)")
        assert len(durations) >= players, f'{name}: {len(durations)} players, expected at least {players}'
        assert all(d > 0 for d in durations), f'{name}: a player with no audio ({durations})'
        text = page.inner_text('body')
        for bad in ('/tmp/', 'VBox(children', '\x1b[', 'Traceback'):
            assert bad not in text, f'{name}: {bad!r} on the page'
        if name == '08_explore':
            view = page.locator('.lyra-explorer-static')
            assert view.count() == 1 and view.is_visible(), 'the explorer has no static view on its page'
            assert view.locator('audio').count() >= 2 and view.locator('img').count() == 1
            box = view.locator('img').bounding_box()
            assert box['width'] >= 500 and box['height'] >= 250, f'the static view picture is {box}'
    finally:
        page.close()
