#!/usr/bin/env python3
"""Side by side, interleaved in one run: an instant mock upstream called directly, through nginx
`proxy_pass` (a proxy doing no work), and through the gateway (auth, a strategy component, the
OpenAI adapter component, usage accounting into SQLite — everything on). A fourth row, `claude`,
goes through the gateway to the mock's Anthropic endpoint: the `anthropic` adapter translating
both ways.

    python3 bench/run.py [--rounds 3] [--seconds 5] [--baseline OTHER-BINARY]

`--baseline` adds a row for another build of the gateway (an earlier commit, say), started the
same way and measured in the same rounds: the honest way to tell whether a change helped on a
machine whose speed drifts. `--baseline-components DIR` gives it that build's components (its
checkout's `config/components`), so component changes are compared too. `--baseline-system YAML`
appends YAML to the baseline's system.yaml: `--baseline target/release/smart-router
--baseline-system 'server: {idle_spin_us: 0}'` measures this build against itself with a setting
changed.

Needs `cargo xtask build` first. Installs wrk and nginx with apt when missing. Prints a table and
writes JSON to bench/results/. Every process runs on 127.0.0.1.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "smart-router")
PORT = {"direct": 19101, "nginx": 19102, "gateway": 19103, "claude": 19103, "baseline": 19104, "base-claude": 19104}
KEY = "sk-bench"


def ensure(tool, package):
    if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
        print(f"installing {package} …", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wait_port(port, timeout=20, proc=None):
    """Waits for `port` to answer HTTP; gives up at once if `proc` (its server) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server for port {port} exited ({proc.returncode})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/")
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing is listening on {port}")


def cpu_model():
    """The processor's name (machine instances of one kind differ: Intel Xeon, AMD EPYC)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        return None


def body(target, stream=False, big=False):
    model = {"gateway": "auto:bench", "baseline": "auto:bench", "claude": "auto:bench-claude",
             "base-claude": "auto:bench-claude"}.get(target, "bench-a")
    messages = [{"role": "user", "content": "Say hello to the benchmark"}]
    if big:
        # A conversation of about 31 KB: a system prompt and 40 turns, as agents and chats send.
        messages = [{"role": "system", "content": "You are a helpful assistant. " * 40}]
        for i in range(40):
            messages.append({"role": "user" if i % 2 == 0 else "assistant",
                             "content": "Here is some context about the WebAssembly component model and routing; " * 10 + str(i)})
    return json.dumps({"model": model, "stream": stream, "messages": messages})


def headers(target):
    h = {"Content-Type": "application/json"}
    if target in ("gateway", "claude", "baseline", "base-claude"):
        h["Authorization"] = f"Bearer {KEY}"
    return h


def wrk(target, connections, seconds, workdir, big=False):
    script = os.path.join(workdir, f"{target}{'-big' if big else ''}.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = {json.dumps(body(target, big=big))}\n")
        for k, v in headers(target).items():
            f.write(f'wrk.headers["{k}"] = "{v}"\n')
    url = f"http://127.0.0.1:{PORT[target]}/v1/chat/completions"
    threads = min(2, connections)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                         check=True, capture_output=True, text=True).stdout

    def us(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"p50_us": us("50"), "p99_us": us("99"), "rps": rps, "requests": requests, "non_2xx": int(errors.group(1)) if errors else 0}


def stream_timing(target, n=200):
    """Time to first byte and to the end of a streamed answer, over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT[target])
    ttfb, total = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body(target, stream=True), headers=headers(target))
        resp = conn.getresponse()
        resp.read1(1)
        t1 = time.perf_counter()
        resp.read()
        t2 = time.perf_counter()
        ttfb.append((t1 - t0) * 1e6)
        total.append((t2 - t0) * 1e6)
    return {"ttfb_p50_us": statistics.median(ttfb), "total_p50_us": statistics.median(total)}


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def tree_ticks(pid):
    """CPU ticks of a process and its children (nginx's master and workers)."""
    total = cpu_ticks(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            total += sum(cpu_ticks(int(c)) for c in f.read().split())
    except OSError:
        pass
    return total


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--baseline", help="another smart-router binary to measure alongside")
    ap.add_argument("--baseline-components", help="the baseline's components folder (default: the same as the gateway's)")
    ap.add_argument("--baseline-system", help="YAML appended to the baseline's system.yaml")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        raise SystemExit("build first: cargo xtask build")
    ensure("wrk", "wrk")
    ensure("nginx", "nginx")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="sr-bench-")
    procs = []
    try:
        procs.append(subprocess.Popen([BIN, "mock-upstream", "--listen", f"127.0.0.1:{PORT['direct']}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  # Request bodies stay in memory (the default spills bodies over 16 KB to a temporary file).
  client_body_buffer_size 1m;
  upstream mock {{ server 127.0.0.1:{PORT['direct']}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORT['nginx']};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
        ngx = subprocess.Popen([nginx, "-c", os.path.join(work, "nginx.conf"), "-p", work, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
        procs.append(ngx)
        cfg = os.path.join(work, "config")
        os.makedirs(cfg)
        with open(os.path.join(cfg, "providers.yaml"), "w") as f:
            f.write(f"providers:\n  bench:\n    adapter: openai\n    base_url: http://127.0.0.1:{PORT['direct']}/v1\n    api_key: sk-upstream\n"
                    "    channels:\n      - {model: bench-a}\n      - {model: bench-b, input_cost_per_1k: 0.001}\n"
                    f"  claude:\n    adapter: anthropic\n    base_url: http://127.0.0.1:{PORT['direct']}\n    api_key: sk-upstream\n"
                    "    channels:\n      - {model: bench-c}\n      - {model: bench-d, input_cost_per_1k: 0.001}\n")
        with open(os.path.join(cfg, "model_groups.yaml"), "w") as f:
            f.write("model_groups:\n  auto:bench:\n    strategy: weighted-sort\n    channels: [{channel: bench/bench-a}, {channel: bench/bench-b}]\n"
                    "  auto:bench-claude:\n    strategy: weighted-sort\n    channels: [{channel: claude/bench-c}, {channel: claude/bench-d}]\n")
        with open(os.path.join(cfg, "system.yaml"), "w") as f:
            f.write(f"components_dir: {os.path.join(ROOT, 'config', 'components')}\n")
        env = {**os.environ, "SMART_ROUTER_MASTER_KEY": KEY, "SMART_ROUTER_LOG": "warn"}
        # Compiled components come from the cache, as on any start after the first: one start
        # to fill it, then the measured one.
        serve = [BIN, "serve", "--config", cfg, "--listen", f"127.0.0.1:{PORT['gateway']}", "--database", f"sqlite://{work}/usage.db",
                 "--component-cache", os.path.join(ROOT, "target", "bench-component-cache")]
        warm = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(PORT["gateway"])
        warm.send_signal(signal.SIGTERM)
        warm.wait(timeout=30)
        gw = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        targets = ["direct", "nginx", "gateway", "claude"]
        # The process (or process tree) serving each target whose CPU time is measured.
        serving = {"gateway": gw, "claude": gw}
        if args.baseline:
            other = [args.baseline] + serve[1:]
            other[other.index("--listen") + 1] = f"127.0.0.1:{PORT['baseline']}"
            other[other.index("--database") + 1] = f"sqlite://{work}/baseline.db"
            if args.baseline_components or args.baseline_system:
                base_cfg = os.path.join(work, "baseline-config")
                shutil.copytree(cfg, base_cfg)
                system = os.path.join(base_cfg, "system.yaml")
                with open(system) as f:
                    lines = f.read().splitlines()
                if args.baseline_components:
                    lines = [l for l in lines if not l.startswith("components_dir:")]
                    lines.insert(0, f"components_dir: {os.path.abspath(args.baseline_components)}")
                if args.baseline_system:
                    lines.append(args.baseline_system)
                with open(system, "w") as f:
                    f.write("\n".join(lines) + "\n")
                other[other.index("--config") + 1] = base_cfg
            # Its compiled components come from the cache too.
            warm = subprocess.Popen(other, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(PORT["baseline"])
            warm.send_signal(signal.SIGTERM)
            warm.wait(timeout=30)
            base = subprocess.Popen(other, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(base)
            serving["baseline"] = serving["base-claude"] = base
            # The baseline through its Anthropic adapter as well: the same pair as `claude`.
            targets += ["baseline", "base-claude"]
        for t in targets:
            wait_port(PORT[t])

        rounds = []
        gw_ticks = gw_requests = ngx_ticks = ngx_requests = 0
        # CPU time per request at 64 connections, per target: steadier than requests per second
        # when the machine's speed drifts, so the fairer comparison of two builds.
        c64_ticks = {t: 0 for t in ["nginx", *serving]}
        c64_requests = dict.fromkeys(c64_ticks, 0)
        ticks_of = lambda t: tree_ticks(ngx.pid) if t == "nginx" else cpu_ticks(serving[t].pid)
        for r in range(args.rounds):
            row = {}
            # Each round starts one target further along, and every other round runs backwards,
            # so no row always runs right after the same neighbour (a machine whose speed drifts
            # favours whichever runs at a good time, and a gateway still writing the usage of its
            # last run takes CPU from the next row).
            shift = r % len(targets)
            order = targets[shift:] + targets[:shift]
            for t in order[::-1] if r % 2 else order:
                before, ngx_before = cpu_ticks(gw.pid), tree_ticks(ngx.pid)
                one = wrk(t, 1, args.seconds, work)
                c64_before = ticks_of(t) if t in c64_ticks else 0
                many = wrk(t, 64, args.seconds, work)
                if t in c64_ticks:
                    c64_ticks[t] += ticks_of(t) - c64_before
                    c64_requests[t] += many["requests"]
                if t in ("gateway", "claude"):
                    gw_ticks += cpu_ticks(gw.pid) - before
                    gw_requests += one["requests"] + many["requests"]
                if t == "nginx":
                    ngx_ticks += tree_ticks(ngx.pid) - ngx_before
                    ngx_requests += one["requests"] + many["requests"]
                row[t] = {"c1": one, "c64": many, "c64_big": wrk(t, 64, args.seconds, work, big=True), "stream": stream_timing(t)}
            rounds.append(row)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        def med(t, path):
            vals = []
            for row in rounds:
                v = row[t]
                for k in path:
                    v = v[k]
                vals.append(v)
            return statistics.median(vals)

        def overhead(t, key):
            return statistics.median(row[t]["c1"][key] - row["direct"]["c1"][key] for row in rounds)

        summary = {}
        for t in targets:
            summary[t] = {
                "c1_p50_us": med(t, ["c1", "p50_us"]),
                "c1_p99_us": med(t, ["c1", "p99_us"]),
                "overhead_p50_us": overhead(t, "p50_us"),
                "overhead_p99_us": overhead(t, "p99_us"),
                "c64_rps": med(t, ["c64", "rps"]),
                "c64_p99_us": med(t, ["c64", "p99_us"]),
                "c64_big_rps": med(t, ["c64_big", "rps"]),
                "stream_ttfb_p50_us": med(t, ["stream", "ttfb_p50_us"]),
                "stream_total_p50_us": med(t, ["stream", "total_p50_us"]),
                "non_2xx": sum(row[t]["c1"]["non_2xx"] + row[t]["c64"]["non_2xx"] + row[t]["c64_big"]["non_2xx"] for row in rounds),
            }
        hz = os.sysconf("SC_CLK_TCK")
        summary["gateway"]["peak_rss_mib"] = round(peak_rss_kib(gw.pid) / 1024, 1)
        summary["gateway"]["cpu_us_per_request"] = round(gw_ticks / hz * 1e6 / max(gw_requests, 1), 1)
        summary["claude"]["peak_rss_mib"] = summary["gateway"]["peak_rss_mib"]
        summary["nginx"]["cpu_us_per_request"] = round(ngx_ticks / hz * 1e6 / max(ngx_requests, 1), 1)
        for t in c64_ticks:
            summary[t]["cpu_us_per_request_c64"] = round(c64_ticks[t] / hz * 1e6 / max(c64_requests[t], 1), 1)
        if args.baseline:
            summary["baseline"]["binary"] = args.baseline
            if args.baseline_system:
                summary["baseline"]["system_yaml"] = args.baseline_system
        ratios = {
            "overhead_p50_vs_nginx": summary["gateway"]["overhead_p50_us"] / max(summary["nginx"]["overhead_p50_us"], 1),
            "throughput_c64_vs_nginx": summary["gateway"]["c64_rps"] / summary["nginx"]["c64_rps"],
            "throughput_c64_big_vs_nginx": summary["gateway"]["c64_big_rps"] / summary["nginx"]["c64_big_rps"],
            "stream_ttfb_minus_nginx_us": summary["gateway"]["stream_ttfb_p50_us"] - summary["nginx"]["stream_ttfb_p50_us"],
            "cpu_per_request_vs_nginx": summary["gateway"]["cpu_us_per_request"] / max(summary["nginx"]["cpu_us_per_request"], 0.1),
        }
        if args.baseline:
            for t, b in (("gateway", "baseline"), ("claude", "base-claude")):
                ratios[f"cpu_per_request_c64_{t}_vs_{b}"] = summary[t]["cpu_us_per_request_c64"] / max(summary[b]["cpu_us_per_request_c64"], 0.1)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit,
            "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(), "python": platform.python_version()},
            "method": f"{args.rounds} interleaved rounds; wrk {args.seconds}s at 1 and 64 connections, and at 64 with a 31 KB conversation; 200 sequential streams per target; medians",
            "summary": summary,
            "ratios": ratios,
            "rounds": rounds,
        }
        print(f"\n{'target':<11} {'p50 c1':>9} {'p99 c1':>9} {'overhead p50':>13} {'overhead p99':>13} {'req/s c64':>10} {'p99 c64':>9} {'req/s 31KB':>11} {'stream TTFB':>12} {'stream end':>11}")
        for t in targets:
            s = summary[t]
            print(f"{t:<11} {s['c1_p50_us']:>7.0f}µs {s['c1_p99_us']:>7.0f}µs {s['overhead_p50_us']:>11.0f}µs {s['overhead_p99_us']:>11.0f}µs "
                  f"{s['c64_rps']:>10.0f} {s['c64_p99_us'] / 1000:>7.2f}ms {s['c64_big_rps']:>11.0f} {s['stream_ttfb_p50_us']:>10.0f}µs {s['stream_total_p50_us']:>9.0f}µs")
        print(f"\ngateway: peak RSS {summary['gateway']['peak_rss_mib']} MiB, CPU {summary['gateway']['cpu_us_per_request']} µs per request "
              f"(nginx: {summary['nginx']['cpu_us_per_request']} µs)")
        print("CPU per request at 64 connections: " + ", ".join(f"{t} {summary[t]['cpu_us_per_request_c64']} µs" for t in c64_ticks))
        print(f"ratios: overhead p50 {ratios['overhead_p50_vs_nginx']:.2f}× nginx's; throughput at 64 connections "
              f"{ratios['throughput_c64_vs_nginx']:.2f}× nginx's ({ratios['throughput_c64_big_vs_nginx']:.2f}× with a 31 KB conversation); stream TTFB {ratios['stream_ttfb_minus_nginx_us']:+.0f} µs vs nginx; "
              f"CPU per request {ratios['cpu_per_request_vs_nginx']:.1f}× nginx's")
        for k, v in ratios.items():
            if k.startswith("cpu_per_request_c64_"):
                print(f"{k}: {v:.2f}")
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        name = datetime.datetime.now().strftime("%Y-%m-%d-%H%M") + f"-{commit}.json"
        with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
            json.dump(result, f, indent=2)
        print(f"written bench/results/{name}", file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
