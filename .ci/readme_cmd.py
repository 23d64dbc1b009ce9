"""Print one of the README's three commands: `setup`, `main` or `test` (the code blocks, in that order).
.ci/run uses this so that it runs exactly what the README tells users to run."""
import re, sys
from pathlib import Path

blocks = re.findall(r'```sh\n(.*?)\n```', (Path(__file__).parent.parent / 'README.md').read_text(), re.S)
if len(blocks) != 3: sys.exit(f'README.md must hold exactly three sh code blocks, found {len(blocks)}')
print(blocks[['setup', 'main', 'test'].index(sys.argv[1])].strip())
