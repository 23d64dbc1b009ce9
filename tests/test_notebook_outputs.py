"""Saved notebook outputs are what the docs site shows: they stay small, legible and free of leftovers.

Each check runs once per notebook in nbs/ and names the notebook and the cell at fault."""
import base64, io, json, re
from pathlib import Path

import pytest
from helpers import ROOT

NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
BUDGET_KB = 400        # per notebook, outputs included
SMALLEST_PT = 7        # the figure house style's smallest text (tick labels), points
PAGE_PX = 800          # the width of the docs page's body column: wider figures are shown shrunk
MIN_TEXT_PX = 8        # legible at 100 % zoom

TEMP_PATH = re.compile(r'(/private)?/var/folders/|/tmp/|\btmp[a-z0-9_]{6,}\b')
HTML_IMAGE = re.compile(r'data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)')   # pictures inside HTML outputs
DATA_URI = re.compile(r'data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+')   # embedded players and pictures: not text
# a value a cell returned by accident: a bare number, bool or None, an object's default repr, a widget's repr
BARE_VALUE = re.compile(r'-?\d+(\.\d+)?|True|False|None|<[\w.]+ object at 0x[0-9a-f]+>|\w+\(children=\(.*', re.S)

def _cells(nb_path: Path):
    "(label, cell) for every code cell: the label names the notebook, the cell's index and its id."
    nb = json.loads(nb_path.read_text())
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] == 'code': yield f'{nb_path.name} cell {i} (id {c.get("id", "?")})', c

def _text(v) -> str: return ''.join(v) if isinstance(v, list) else str(v)

def _texts(out: dict):
    "(kind, text) of an output's textual parts, embedded data removed."
    if out['output_type'] == 'stream': yield out['name'], _text(out['text'])
    elif out['output_type'] == 'error': yield 'error', '\n'.join(out.get('traceback', [])) or out.get('evalue', '')
    for k, v in out.get('data', {}).items():
        if k.startswith('text/'): yield k, DATA_URI.sub('data:…', _text(v))

def output_problems(nb_path: Path) -> list:
    "Leftovers in the saved outputs of a notebook: temp paths, escape codes, errors, stray return values."
    problems = []
    for label, c in _cells(nb_path):
        for out in c.get('outputs', []):
            if out['output_type'] == 'error':
                problems.append(f'{label}: a saved error ({out.get("ename")})')
            for kind, text in _texts(out):
                if m := TEMP_PATH.search(text):
                    problems.append(f'{label}: a temp path in its {kind} output: {text[max(0, m.start() - 30):m.end() + 30]!r}')
                if '\x1b' in text:
                    problems.append(f'{label}: terminal escape codes in its {kind} output: {text[:60]!r}')
            data = out.get('data', {})
            if out['output_type'] == 'execute_result' and set(data) == {'text/plain'} and \
               BARE_VALUE.fullmatch(_text(data['text/plain']).strip()):
                problems.append(f'{label}: a stray return value {_text(data["text/plain"]).strip()[:60]!r}')
    return problems

def figure_problems(nb_path: Path) -> list:
    "Saved figures whose smallest text would be under 8 px on the docs page (from their dpi and pixel width)."
    from PIL import Image
    problems = []
    for label, c in _cells(nb_path):
        for out in c.get('outputs', []):
            pictures = [(k, _text(v)) for k, v in out.get('data', {}).items() if k in ('image/png', 'image/jpeg')]
            pictures += [(f'image/{m[1]} in HTML', m[2]) for m in HTML_IMAGE.finditer(_text(out.get('data', {}).get('text/html', '')))]
            for k, b64 in pictures:
                im = Image.open(io.BytesIO(base64.b64decode(b64)))
                dpi = float((im.info.get('dpi') or (0,))[0])
                shown = min(im.width, PAGE_PX) / im.width
                px = SMALLEST_PT / 72 * dpi * shown
                if px < MIN_TEXT_PX:
                    problems.append(f'{label}: {k} {im.width}x{im.height} at {dpi:.0f} dpi: {SMALLEST_PT}-point text is '
                                    f'{px:.1f} px on the page (house style: PNG at FIGURE_DPI = 100)')
    return problems

@pytest.mark.parametrize('nb_path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_within_size_budget(nb_path):
    kb = nb_path.stat().st_size / 1000
    assert kb <= BUDGET_KB, f'{nb_path.name} is {kb:.0f} kB, over its {BUDGET_KB} kB budget'

@pytest.mark.parametrize('nb_path', NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_outputs_are_clean(nb_path):
    problems = output_problems(nb_path)
    assert not problems, '\n'.join(problems)

@pytest.mark.parametrize('nb_path', NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_figures_are_legible(nb_path):
    problems = figure_problems(nb_path)
    assert not problems, '\n'.join(problems)

def test_the_scan_finds_each_kind_of_leftover(tmp_path):
    "The checks above can fail: a notebook holding each leftover is flagged once per leftover, naming the cell."
    outs = [{'output_type': 'stream', 'name': 'stderr', 'text': ['wrote /tmp/tmpab12cd34/x.wav\n']},
            {'output_type': 'stream', 'name': 'stdout', 'text': ['\x1b[2K\r50%']},
            {'output_type': 'execute_result', 'data': {'text/plain': ['0']}, 'metadata': {}, 'execution_count': 1},
            {'output_type': 'execute_result', 'data': {'text/plain': ["VBox(children=(HBox(children=(Dropdown(…"]},
             'metadata': {}, 'execution_count': 2},
            {'output_type': 'execute_result', 'data': {'text/plain': ['(1, 64, 44)']}, 'metadata': {}, 'execution_count': 3},
            {'output_type': 'display_data', 'data': {'text/html': ['<audio src="data:audio/mpeg;base64,AAAA/tmp/AAAA">'],
             'text/plain': ['<IPython.lib.display.Audio object>']}, 'metadata': {}}]
    cells = [{'cell_type': 'code', 'id': f'c{i}', 'source': [], 'metadata': {}, 'outputs': [o], 'execution_count': None}
             for i, o in enumerate(outs)]
    nb = tmp_path / 'x.ipynb'
    nb.write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    problems = output_problems(nb)
    assert len(problems) == 4, problems          # the shape tuple and the embedded player are fine
    assert [p.split(':')[0] for p in problems] == [f'x.ipynb cell {i} (id c{i})' for i in range(4)]

def test_the_figure_check_flags_a_small_jpeg(tmp_path):
    "A 56-dpi JPEG (the old way of keeping notebooks small) is flagged; a 100-dpi PNG is not."
    from PIL import Image
    def img(fmt, dpi):
        buf = io.BytesIO(); Image.new('RGB', (700, 200), 'white').save(buf, format=fmt, dpi=(dpi, dpi))
        return base64.b64encode(buf.getvalue()).decode()
    cells = [{'cell_type': 'code', 'id': f'c{i}', 'source': [], 'metadata': {}, 'execution_count': None,
              'outputs': [{'output_type': 'display_data', 'data': {k: v}, 'metadata': {}}]}
             for i, (k, v) in enumerate([('image/jpeg', img('JPEG', 56)), ('image/png', img('PNG', 100))])]
    nb = tmp_path / 'x.ipynb'
    nb.write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    problems = figure_problems(nb)
    assert len(problems) == 1 and problems[0].startswith('x.ipynb cell 0 (id c0): image/jpeg 700x200 at 56 dpi'), problems

# --- the root Quarto project -------------------------------------------------------------------------------------

def test_root_quarto_yml_works_from_the_root():
    "The root _quarto.yml names only paths that exist from the root and keeps nbs/_quarto.yml's site settings."
    import yaml
    root, nbs = (yaml.safe_load((d / '_quarto.yml').read_text()) for d in (ROOT, ROOT / 'nbs'))
    assert root['project']['type'] == nbs['project']['type'] == 'website'
    assert root['project']['output-dir'] == '_docs'    # where nbdev_docs puts the site (settings.ini's doc_path)
    for pattern in root['project']['render']: assert list(ROOT.glob(pattern)), f'{pattern}: no such files from the root'
    assert (ROOT / root['format']['html']['css']).exists()
    for f in root.get('metadata-files', []): assert (ROOT / f).exists(), f
    html_r, html_n = dict(root['format']['html']), dict(nbs['format']['html'])
    assert (ROOT / 'nbs' / html_n.pop('css')).samefile(ROOT / html_r.pop('css'))
    assert html_r == html_n and root['format'].get('commonmark') == nbs['format'].get('commonmark')
    for k, v in nbs['website'].items():
        if k in ('navbar', 'sidebar'): assert v.items() <= root['website'][k].items(), k
        else: assert root['website'][k] == v, k
