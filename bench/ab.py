#!/usr/bin/env python3
"""A/B of module builds (not a test): req/s of two or more builds of ngx_http_wsgi_module, each
with its own nginx binary, in one run, rounds interleaved, with run.py's method (wrk -t2 -c64,
nginx with 2 workers, `listen ... reuseport`, every answer checked first).

    bench/.venv/bin/python bench/ab.py --variant 'old=/tmp/ab-old-target/release' \\
        --variant 'new=target/release' [--variant 'NAME=BUILD_DIR:CONFIG LINES'] \\
        [--workloads hello,json,flask] [--duration 5] [--rounds 3]

BUILD_DIR is a `cargo build --release` output directory (its `ngx-wsgi paths` names the module
and the nginx it was built for: a module only loads into its own build's nginx). CONFIG LINES,
after a colon and separated by `|`, go into that variant's nginx.conf: into the main context, or
into `http` when they start with `http:`, e.g. `thread_pool default threads=2;|http:wsgi_thread_pool
default;`. The first variant is the reference: every other is reported as a ratio to it.
"""
import argparse
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run  # noqa: E402
from run import BENCH, CORES, WORKLOADS, cpu_seconds, descendants, nginx_conf, stop_process, wait_tcp, wrk  # noqa: E402


class Variant:
    def __init__(self, spec, root):
        self.name, _, rest = spec.partition("=")
        build, _, lines = rest.partition(":")
        self.build = (root / build).resolve() if not os.path.isabs(build) else pathlib.Path(build)
        helper = self.build / "ngx-wsgi"
        if not helper.exists():
            sys.exit(f"{helper} is missing: build that tree with cargo build --release")
        out = subprocess.run([str(helper), "paths"], capture_output=True, text=True, check=True).stdout
        d = dict(line.split(": ", 1) for line in out.splitlines())
        self.module, self.nginx = d["module"], d["nginx"]
        items = [x.strip() for x in lines.split("|") if x.strip()]
        self.main = [x for x in items if not x.startswith("http:")]
        self.http = [x[5:] for x in items if x.startswith("http:")]

    def describe(self):
        extra = " ".join(self.main + [f"http {{ {x} }}" for x in self.http]) or "no pool directives"
        return f"{self.name}: {self.module} ({extra})"

    def start(self, tmp):
        self.dir = tmp / self.name
        (self.dir / "logs").mkdir(parents=True)
        self.port = run.free_port()
        body = f"""
  wsgi_python_home {sys.prefix};
  {' '.join(self.http)}
  server {{
    listen 127.0.0.1:{self.port} reuseport;
    location / {{ wsgi_app {BENCH}/apps.py:dispatch; }}
  }}"""
        head = f"load_module {self.module};\n" + "\n".join(self.main)
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, body, head=head))
        log = open(self.dir / "logs/stdout.log", "ab")
        self.proc = subprocess.Popen([self.nginx, "-p", str(self.dir), "-c", str(conf)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_tcp(self.port, [self.proc], self.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=BUILD_DIR[:CONFIG LINES]")
    ap.add_argument("--workloads", default="hello,json,flask")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    variants = [Variant(v, run.ROOT) for v in args.variant]
    workloads = [w for w in args.workloads.split(",") if w]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-ab-"))
    started = []
    try:
        for v in variants:
            v.start(tmp)
            started.append(v)
        for v in variants:
            for w in workloads:
                run.verify(v.name, v.port, WORKLOADS[w])
        for v in variants:                       # warm-up
            for w in workloads:
                wrk(v.port, WORKLOADS[w].path, 1, args.connections)
        rps = {(v.name, w): [] for v in variants for w in workloads}
        cpu = {(v.name, w): [] for v in variants for w in workloads}     # server CPU us per request
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for w in workloads:
                for v in order:
                    pids = descendants([v.proc.pid])
                    before = cpu_seconds(pids)
                    value, p99, errors = wrk(v.port, WORKLOADS[w].path, args.duration, args.connections)
                    per_request = (cpu_seconds(pids) - before) / (value * args.duration) * 1e6
                    rps[(v.name, w)].append(value)
                    cpu[(v.name, w)].append(per_request)
                    print(f"round {r + 1}/{args.rounds} {w:6} {v.name:12} {value:9.0f} req/s  p99 {p99:6.2f} ms  "
                          f"{per_request:6.1f} us CPU/request"
                          + (f"  {errors}" if errors else ""), file=sys.stderr)
    finally:
        for v in started:
            stop_process(v.proc, signal.SIGQUIT)
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    ref = variants[0].name
    print(f"\n{CORES} cores; nginx worker_processes {CORES}; wrk -t2 -c{args.connections} -d{args.duration}s; "
          f"{args.rounds} interleaved rounds; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for title, data, unit in [("req/s", rps, "{:.0f}"), ("server CPU per request, us", cpu, "{:.1f}")]:
        print(f"\n#### {title}\n")
        print("| workload | " + " | ".join(v.name for v in variants) + " | "
              + " | ".join(f"{v.name} / {ref}" for v in variants[1:]) + " |")
        print("|---|" + "---|" * (2 * len(variants) - 1))
        for w in workloads:
            cells = []
            for v in variants:
                values = data[(v.name, w)]
                cells.append(" ".join([unit.format(statistics.median(values)),
                                       "(" + unit.format(min(values)) + "-" + unit.format(max(values)) + ")"]))
            for v in variants[1:]:
                # Round by round: the variants of one workload run back to back, so the machine's
                # drift between rounds cancels out of each round's ratio.
                ratios = [a / b for a, b in zip(data[(v.name, w)], data[(ref, w)])]
                cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
            print(f"| {WORKLOADS[w].label} | " + " | ".join(cells) + " |")
    print("\nmedian (min-max) of the rounds; ratios: median (min-max) of the rounds' own ratios. Server CPU: "
          "user + system seconds of the nginx processes during the run / requests served; on a shared machine "
          "it moves much less than req/s, which follows the CPU share the server gets.")
    for v in variants:
        print(f"- {v.describe()}")


if __name__ == "__main__":
    main()
