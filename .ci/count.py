"""Print the closing `N passed, M failed` line of a CI run: notebooks run by nbdev_test plus pytest's tests.
Usage: count.py LOG EXIT_CODE"""
import re, sys
from nbdev.test import nbglob, _keep_file

log, rc = open(sys.argv[1], errors='replace').read(), int(sys.argv[2])
nbs = [f for f in nbglob(as_path=True) if _keep_file(f, '.notest')]
nb_failed = len(re.findall(r'^==> ', log, re.M)) if 'nbdev Tests Failed' in log else 0
nb_ran = 'Success' in log or 'nbdev Tests Failed' in log
nb_passed = len(nbs) - nb_failed if nb_ran else 0
if not nb_ran: nb_failed = len(nbs)
summary = [l for l in log.splitlines() if re.search(r'\d+ (passed|failed|error)', l) and ' in ' in l]
last = summary[-1] if summary else ''
num = lambda word: sum(int(n) for n in re.findall(rf'(\d+) {word}', last))
py_passed, py_failed = num('passed'), num('failed') + num('errors?')
print(f'notebooks: {nb_passed} passed, {nb_failed} failed')
print(f'pytest: {py_passed} passed, {py_failed} failed')
if rc != 0 and nb_failed + py_failed == 0: py_failed = 1  # e.g. pytest collected nothing (exit 5)
print(f'total: {nb_passed + py_passed} passed, {nb_failed + py_failed} failed')
