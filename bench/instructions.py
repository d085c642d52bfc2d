#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: a measure of the gateway's own work
that does not move with the machine's load or clock (the same binary, components and requests
count the same within about 1 %), so a change of a few per cent can be told from noise where
wall-clock CPU time cannot.

    python3 bench/instructions.py ROUNDS REQUESTS NAME=BINARY:COMPONENTS_DIR ...
    python3 bench/instructions.py 2 1000 new=target/release/smart-router:config/components \
        old=/tmp/old/smart-router:/tmp/old/components
    BREAKDOWN=1 python3 bench/instructions.py 1 1000 new=target/release/smart-router:config/components

Each build serves the bench's request (`auto:bench`: the `weighted-sort` strategy, the `openai`
adapter, a usage row in SQLite) from its own components folder, under callgrind, against the
mock upstream. Counting starts after 20 warm-up requests and covers REQUESTS requests sent one
after another from one connection, every thread of the gateway included (the usage writer and
SQLite too), idle spinning off. BIG=1 sends bench/run.py's 31 KB conversation; STREAM=1 asks
for a stream. BREAKDOWN=1 also prints where the instructions went, by crate, with the guests'
code (named through wasmtime's perf map; build the components with
`CARGO_PROFILE_GUEST_STRIP=none cargo xtask guests` to see their function names).

At one connection the usage writer commits a transaction for nearly every row, so SQLite's
share is larger here than under load, where a transaction carries tens of rows.
Needs valgrind (Debian's `valgrind`, on every machine of this kind).
"""
import bisect, collections, glob, http.client, os, re, shutil, signal, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import KEY, body, wait_port  # the bench's own request, key and wait  # noqa: E402

if len(sys.argv) < 4:
    raise SystemExit(__doc__)
ROUNDS, N = int(sys.argv[1]), int(sys.argv[2])
specs = [a.split("=", 1) for a in sys.argv[3:]]
BREAKDOWN = os.environ.get("BREAKDOWN") == "1"
MOCK, PORT = 19401, 19402
work = tempfile.mkdtemp(prefix="sr-instr-")

BODY = body("gateway", stream=os.environ.get("STREAM") == "1", big=os.environ.get("BIG") == "1")
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def config(name, comps):
    cfg = os.path.join(work, name)
    os.makedirs(cfg, exist_ok=True)
    with open(os.path.join(cfg, "providers.yaml"), "w") as f:
        f.write(f"providers:\n  bench:\n    adapter: openai\n    base_url: http://127.0.0.1:{MOCK}/v1\n    api_key: sk-upstream\n"
                "    channels:\n      - {model: bench-a}\n      - {model: bench-b, input_cost_per_1k: 0.001}\n")
    with open(os.path.join(cfg, "model_groups.yaml"), "w") as f:
        f.write("model_groups:\n  auto:bench:\n    strategy: weighted-sort\n    channels: [{channel: bench/bench-a}, {channel: bench/bench-b}]\n")
    with open(os.path.join(cfg, "system.yaml"), "w") as f:
        f.write(f"components_dir: {os.path.abspath(comps)}\nserver: {{idle_spin_us: 0}}\n")
    return cfg


def measure(name, binary, comps, out):
    cfg = config(name, comps)
    db = os.path.join(work, f"{name}.db")
    for f in glob.glob(db + "*"):
        os.remove(f)
    env = {**os.environ, "SMART_ROUTER_MASTER_KEY": KEY, "SMART_ROUTER_LOG": "warn"}
    if BREAKDOWN:
        env["SMART_ROUTER_WASM_PERFMAP"] = "1"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           binary, "serve", "--config", cfg, "--listen", f"127.0.0.1:{PORT}", "--database", f"sqlite://{db}",
           "--component-cache", os.path.join(work, f"cache-{name}")]
    gw = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(PORT, timeout=300, proc=gw)
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)

        def one():
            c.request("POST", "/v1/chat/completions", BODY, HEADERS)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"{name}: HTTP {r.status}")

        for _ in range(20):
            one()
        subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, capture_output=True)
        for _ in range(N):
            one()
        subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True, capture_output=True)
        c.close()
    finally:
        gw.send_signal(signal.SIGINT)
        gw.wait(timeout=120)
    with open(out) as f:
        total = next(int(l.split()[1]) for l in f if l.startswith("totals:"))
    return total / N, gw.pid


def breakdown(out, pid):
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", out],
                          capture_output=True, text=True, check=True).stdout
    jit = []
    perfmap = f"/tmp/perf-{pid}.map"
    if os.path.exists(perfmap):
        with open(perfmap) as f:
            for line in f:
                addr, size, sym = line.rstrip("\n").split(" ", 2)
                jit.append((int(addr, 16), int(size, 16), sym))
        jit.sort()
    starts = [j[0] for j in jit]
    crates, guest = collections.Counter(), collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir, where = int(m.group(1).replace(",", "")), m.group(2)
        if where.startswith("???:0x") and where.endswith("[???]"):
            addr = int(where[4:].split()[0], 16)
            i = bisect.bisect_right(starts, addr) - 1
            sym = jit[i][2] if i >= 0 and addr < jit[i][0] + jit[i][1] else "?"
            guest[sym] += ir
            key = "guest code (wasm)"
        elif (f := re.match(r"[^:]*:<*([A-Za-z_][A-Za-z0-9_]*)::", where)):
            # A Rust function, by the crate it belongs to (std's code inlined into it included).
            key = {"smart_router": "smart-router (host)"}.get(f.group(1), f.group(1).replace("_", "-"))
        elif (c := re.search(r"index\.crates\.io-[0-9a-f]+/([^/]+)/", where)):
            key = re.sub(r"-[\d.]+$", "", c.group(1))
        elif "libc.so" in where or where.startswith("./"):
            key = "libc"
        else:
            key = "other"
        crates[key] += ir
    total = sum(crates.values())
    print(f"  where the instructions went ({total / N:,.0f} per request attributed):")
    for k, v in crates.most_common(14):
        print(f"    {v / N:9,.0f}  {100 * v / total:5.1f} %  {k}")
    if guest:
        print("  the guests' hottest functions:")
        for k, v in guest.most_common(12):
            print(f"    {v / N:9,.0f}  {k[:110]}")
    if os.path.exists(perfmap):
        os.remove(perfmap)


mock = subprocess.Popen([os.path.abspath(specs[0][1].split(":")[0]), "mock-upstream", "--listen", f"127.0.0.1:{MOCK}"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    results = {name: [] for name, _ in specs}
    for r in range(ROUNDS):
        order = specs if r % 2 == 0 else specs[::-1]
        for name, spec in order:
            binary, comps = spec.split(":", 1)
            out = os.path.join(work, f"{name}-{r}.out")
            per, pid = measure(name, os.path.abspath(binary), comps, out)
            results[name].append(per)
            print(f"round {r + 1} {name}: {per:,.0f} instructions per request", flush=True)
            if BREAKDOWN and r == 0:
                breakdown(out, pid)
    first = specs[0][0]
    base = min(results[first])
    for name, counts in results.items():
        best = min(counts)
        print(f"{name}: {best:,.0f} per request (fewest of {len(counts)}; spread {max(counts) / best - 1:.1%})"
              + ("" if name == first else f", {best / base:.3f}x {first}'s"))
finally:
    mock.terminate()
    shutil.rmtree(work, ignore_errors=True)
