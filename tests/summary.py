"""Print one closing line for `make test` from the pytest JUnit files."""
from __future__ import annotations

import glob
import os
import sys
import xml.etree.ElementTree as ET


def main(folder):
    totals = {'tests': 0, 'failures': 0, 'errors': 0, 'skipped': 0}
    for path in sorted(glob.glob(os.path.join(folder, '*.xml'))):
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == 'testsuite' else root.findall('testsuite')
        for suite in suites:
            for key in totals:
                totals[key] += int(suite.get(key, 0))
    failed = totals['failures'] + totals['errors']
    passed = totals['tests'] - failed - totals['skipped']
    line = 'make test: %d passed, %d failed' % (passed, failed)
    if totals['skipped']:
        line += ', %d skipped' % totals['skipped']
    print('pytest suites (plus sanity, lint and molecule, which passed or make would have stopped):')
    print(line)
    return 1 if failed or totals['skipped'] or not totals['tests'] else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else 'tests/output'))
