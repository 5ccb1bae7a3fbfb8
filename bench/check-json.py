#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The benchmark's smoke test: run lazymap-bench --quick --json and check that
the JSON parses and holds every row --list names, each twin with a status and,
when it ran, sane numbers; then that bench/plot turns it into a PNG. It times
nothing: speed is the benchmark's job (a daemon row's target may be met or
not; it must only be stated).

The daemon rows run through a faultd the bench starts itself. They may be
"unavailable" only all together, each side with a reason, when faultd could
not be found or started; once faultd served, every side of them must have
run. --expect-faultd (the build made faultd): the bench must have found it.

The nbd rows run against an nbdkit (and an nbdfuse mount) the bench starts
for each row: without nbdkit every side of them is "unavailable" with a
reason; without nbdfuse, /dev/fuse or a mount their kernel twin is;
lazymap_map_uri may be unavailable (a library without NBD); lazymap of the
file, once nbdkit served, must have run; and every target must agree with
its value (none stated of a side that did not run).

The umap rows run umap() of liblazymap-umap against lazymap_map on a
lazymap with the layer's options (lazymap_direct) and the kernel: all three
must have run, with a target (max 1.05, umap / lazymap_direct) that agrees
with its value, and the top-level "umap" must say how both were configured.
Usage: check-json.py BENCH PLOT [--expect-faultd]"""
import json
import os
import subprocess
import sys
import tempfile


def main():
    bench, plot = sys.argv[1], sys.argv[2]
    expect_faultd = '--expect-faultd' in sys.argv[3:]
    rows = [line.split()[0] for line in
            subprocess.run([bench, '--list'], capture_output=True, text=True,
                           check=True).stdout.splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'bench.json')
        run = subprocess.run([bench, '--quick', '--json', out],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode != 0:
            print(run.stderr)
            print(f'FAIL: lazymap-bench --quick exited {run.returncode}')
            print('0 passed, 1 failed')
            return 1
        with open(out) as f:
            data = json.load(f)
        png = os.path.join(d, 'bench.png')
        drawn = subprocess.run([plot, out, '-o', png], capture_output=True, text=True)
        magic = b''
        if os.path.exists(png):
            with open(png, 'rb') as f:
                magic = f.read(8)

    checks = []

    def check(ok, what):
        checks.append(ok)
        if not ok:
            print('FAIL:', what)

    check(drawn.returncode == 0 and magic == b'\x89PNG\r\n\x1a\n',
          f'bench/plot exited {drawn.returncode} without a PNG: {drawn.stderr.strip()}')

    seen = {r['row'] for r in data['results']}
    for row in rows:
        check(row in seen, f'row {row} missing from the JSON')
    for key in ('tool', 'date', 'kernel', 'cpus', 'page_size', 'ratio', 'cdf_quantiles'):
        check(key in data, f'top-level key {key} missing')
    nq = len(data.get('cdf_quantiles', []))
    matrix = {(r['threads'], r['handler_threads'])
              for r in data['results'] if r['group'] == 'threads'}
    check(matrix == {(f, h) for f in (1, 2, 4) for h in ('1', '2')},
          f'threads matrix is {sorted(matrix)}, not 1,2,4 faulting x 1,2 handlers')
    daemon_rows = [r for r in data['results'] if r['group'] == 'daemon']
    fd = data.get('faultd')
    if daemon_rows:
        check(isinstance(fd, dict) and fd.get('status') in ('ok', 'unavailable'),
              f'daemon rows without a top-level "faultd" status: {fd}')
        fd = fd if isinstance(fd, dict) else {}
        if fd.get('status') == 'unavailable':
            check(bool(fd.get('reason')), 'faultd unavailable without a reason')
        if expect_faultd:
            check(bool(fd.get('binary')), f"faultd was built but the bench did not find it: {fd.get('reason')}")
        if fd.get('status') == 'unavailable':
            print(f"note: the daemon rows did not run: {fd.get('reason')}")
        for r in daemon_rows:
            check(r.get('twin') == 'kernel' and isinstance(r.get('in_process'), dict),
                  f"{r['row']}: a daemon row needs the kernel twin and an in_process side")
            t = r.get('target')
            check(isinstance(t, dict) and t.get('max') == 1.5 and t.get('met') in (True, False, None),
                  f"{r['row']}: no target (max 1.5, met true/false/null): {t}")
            sides = [r.get(side, {}) for side in ('kernel', 'lazymap', 'in_process')]
            if all(s.get('status') == 'unavailable' and s.get('reason') for s in sides):
                continue  # a row that cannot run in this build (its reason says why)
            for side in ('kernel', 'lazymap', 'in_process'):
                s = r.get(side, {})
                if fd.get('status') == 'ok':
                    check(s.get('status') == 'ok',
                          f"{r['row']} {side}: {s.get('status')} ({s.get('reason')}) though faultd served")
                else:
                    check(s.get('status') == 'unavailable' and bool(s.get('reason')),
                          f"{r['row']} {side}: {s.get('status')}, faultd unavailable: want 'unavailable' with a reason")
            if fd.get('status') == 'ok':
                check(isinstance(t, dict) and isinstance(t.get('value'), (int, float)) and t['value'] > 0
                      and t.get('met') == (t['value'] <= t['max']),
                      f"{r['row']}: target not stated: {t}")
                check(r.get('ratio_faultd_in_process', 0) > 0, f"{r['row']}: no faultd/in-process ratio")
    nbd_rows = [r for r in data['results'] if r['group'] == 'nbd']
    nbd = data.get('nbd')
    if nbd_rows:
        check(isinstance(nbd, dict) and nbd.get('status') in ('ok', 'unavailable')
              and isinstance(nbd.get('nbdfuse'), dict),
              f'nbd rows without a top-level "nbd" status: {nbd}')
        nbd = nbd if isinstance(nbd, dict) else {}
        fuse = nbd.get('nbdfuse') if isinstance(nbd.get('nbdfuse'), dict) else {}
        if nbd.get('status') != 'ok':
            check(bool(nbd.get('reason')), 'nbd unavailable without a reason')
            print(f"note: the nbd rows did not run: {nbd.get('reason')}")
        elif fuse.get('status') != 'ok':
            check(bool(fuse.get('reason')), 'nbdfuse unavailable without a reason')
            print(f"note: the nbd rows' kernel twin did not run: {fuse.get('reason')}")
        for r in nbd_rows:
            sides = {k: r.get(k) if isinstance(r.get(k), dict) else {}
                     for k in ('kernel', 'lazymap', 'lazymap_file')}
            if nbd.get('status') != 'ok' or sides['lazymap_file'].get('status') == 'unavailable':
                check(all(s.get('status') == 'unavailable' and s.get('reason') for s in sides.values()),
                      f"{r['row']}: nbdkit did not serve, yet not every side is unavailable with a reason")
            else:
                check(sides['lazymap_file'].get('status') == 'ok',
                      f"{r['row']} lazymap_file: {sides['lazymap_file'].get('status')} "
                      f"({sides['lazymap_file'].get('reason')}) though nbdkit served")
                # nbdfuse found may still fail to mount (a container without FUSE mounts)
                if fuse.get('status') == 'ok' and sides['kernel'].get('status') == 'unavailable':
                    print(f"note: {r['row']}: the kernel twin (nbdfuse) did not run: "
                          f"{sides['kernel'].get('reason')}")
            if nbd.get('status') == 'ok' and sides['lazymap'].get('status') == 'unavailable':
                print(f"note: {r['row']}: lazymap_map_uri unavailable: {sides['lazymap'].get('reason')}")
            ts = r.get('targets')
            check(isinstance(ts, list) and len(ts) == (2 if r['scenario'].startswith('nbd-seq') else 1),
                  f"{r['row']}: targets {ts}")
            for t in ts if isinstance(ts, list) else []:
                base = 'lazymap_file' if 'lazymap-file' in str(t.get('ratio')) else 'kernel'
                ran = sides['lazymap'].get('status') == 'ok' and sides[base].get('status') == 'ok'
                v = t.get('value')
                check(isinstance(t.get('min'), (int, float)) and t['min'] > 0,
                      f"{r['row']}: target without a min: {t}")
                if ran:
                    check(isinstance(v, (int, float)) and v > 0 and t.get('met') == (v >= t.get('min', 0)),
                          f"{r['row']}: target not stated: {t}")
                else:
                    check(v is None and t.get('met') is None,
                          f"{r['row']}: a target stated of a side that did not run: {t}")
    umap_rows = [r for r in data['results'] if r['group'] == 'umap']
    if umap_rows:
        um = data.get('umap')
        check(isinstance(um, dict) and um.get('page_fillers', 0) >= 1
              and um.get('bufsize_pages', 0) > 0 and um.get('resident_limit_bytes', 0) > 0
              and um.get('handler_threads') == um.get('page_fillers'),
              f'umap rows without a top-level "umap" configuration: {um}')
        for r in umap_rows:
            for side in ('kernel', 'lazymap', 'lazymap_direct'):
                s = r.get(side) if isinstance(r.get(side), dict) else {}
                check(s.get('status') == 'ok',
                      f"{r['row']} {side}: {s.get('status')} ({s.get('reason')})")
            t = r.get('target')
            v = t.get('value') if isinstance(t, dict) else None
            check(isinstance(t, dict) and t.get('max') == 1.05 and isinstance(v, (int, float))
                  and v > 0 and t.get('met') == (v <= 1.05),
                  f"{r['row']}: target not stated (max 1.05, value, met): {t}")
            check(r.get('ratio_lazymap_direct_kernel', 0) > 0,
                  f"{r['row']}: no lazymap_direct/kernel ratio")
            if r.get('variant') == 'shared':
                check(r.get('flush_ratio_umap_lazymap_direct', 0) > 0,
                      f"{r['row']}: no umap_flush/lazymap_sync ratio")
    for r in data['results']:
        check(r['group'] in ('anon', 'threads', 'file', 'daemon', 'nbd', 'umap'),
              f"{r['row']}: group {r['group']}")
        third = {'daemon': ('in_process',), 'nbd': ('lazymap_file',),
                 'umap': ('lazymap_direct',)}.get(r['group'], ())
        for side in ('kernel', 'lazymap') + third:
            s = r.get(side, {'status': 'missing'})
            check(s['status'] in ('ok', 'unavailable'),
                  f"{r['row']} ({r['threads']} threads) {side}: status {s['status']}")
            if s['status'] != 'ok':
                check(bool(s.get('reason')), f"{r['row']} {side}: unavailable without a reason")
                continue
            lat = s['latency_ns']
            check(s['ns_per_page'] > 0, f"{r['row']} {side}: ns_per_page {s['ns_per_page']}")
            check(0 <= lat['p50'] <= lat['p90'] <= lat['p99'] <= lat['max'],
                  f"{r['row']} {side}: latency percentiles out of order {lat}")
            cdf = s['latency_cdf_ns']
            check(len(cdf) == nq and cdf == sorted(cdf) and cdf[-1] == lat['max'],
                  f"{r['row']} {side}: latency CDF not {nq} ascending points ending at max")
        if r['kernel']['status'] == 'ok' and r['lazymap']['status'] == 'ok':
            check(r.get('ratio', 0) > 0, f"{r['row']}: no ratio")
    failed = checks.count(False)
    print(f'{len(checks) - failed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
