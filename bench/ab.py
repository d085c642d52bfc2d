#!/usr/bin/env python3
"""Alternating A/B rounds of gateway builds only (no nginx, no direct row): each build serves the
bench's request through the `weighted-sort` strategy and the `openai` adapter from its own
components folder, wrk drives them in turn (the order rotates and reverses every round), and
the CPU time each gateway process spent is divided by the requests it served.
    python3 bench/ab.py ROUNDS SECONDS NAME=BINARY:COMPONENTS_DIR[:IDLE_SPIN_US] ...
    CONNS=1 BIG=1 python3 bench/ab.py 8 4 new=target/release/smart-router:config/components \
        old=/tmp/old/smart-router:/tmp/old/components
IDLE_SPIN_US, when given, goes in that build's system.yaml as `server.idle_spin_us` (so a build
can be measured against itself with spinning off). CONNS sets the connections (64); BIG=1 sends
bench/run.py's 31 KB conversation instead of one line. Prints each round and the medians (requests per second, CPU µs per request). Needs wrk
(`bench/run.py` installs it). Use it to tell a change from the machine's drift; `bench/run.py`
is the full side-by-side measurement.
"""
import subprocess, os, sys, time, re, statistics, tempfile, http.client, json
if len(sys.argv) < 5:
    raise SystemExit(__doc__)
ROUNDS=int(sys.argv[1]); SECS=int(sys.argv[2]); CONNS=int(os.environ.get("CONNS","64"))
specs=[a.split("=",1) for a in sys.argv[3:]]
work=tempfile.mkdtemp(prefix="sr-ab-")
MOCK=19301
procs=[subprocess.Popen([os.path.abspath(specs[0][1].split(":")[0]),"mock-upstream","--listen",f"127.0.0.1:{MOCK}"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)]
def wait(port):
    for _ in range(200):
        try:
            c=http.client.HTTPConnection("127.0.0.1",port,timeout=1); c.request("GET","/"); c.getresponse().read(); return
        except OSError: time.sleep(0.1)
    raise SystemExit(f"no {port}")
gws={}
for i,(name,spec) in enumerate(specs):
    parts=spec.split(":"); binp,comps=(os.path.abspath(x) for x in parts[:2])
    cfg=f"{work}/{name}"; os.makedirs(cfg)
    open(f"{cfg}/providers.yaml","w").write(f"providers:\n  bench:\n    adapter: openai\n    base_url: http://127.0.0.1:{MOCK}/v1\n    api_key: sk-upstream\n    channels:\n      - {{model: bench-a}}\n      - {{model: bench-b, input_cost_per_1k: 0.001}}\n")
    open(f"{cfg}/model_groups.yaml","w").write("model_groups:\n  auto:bench:\n    strategy: weighted-sort\n    channels: [{channel: bench/bench-a}, {channel: bench/bench-b}]\n")
    spin=f"server: {{idle_spin_us: {parts[2]}}}\n" if len(parts)>2 else ""
    open(f"{cfg}/system.yaml","w").write(f"components_dir: {comps}\n{spin}")
    port=19310+i
    env={**os.environ,"SMART_ROUTER_MASTER_KEY":"sk-bench","SMART_ROUTER_LOG":"warn"}
    p=subprocess.Popen([binp,"serve","--config",cfg,"--listen",f"127.0.0.1:{port}","--database",f"sqlite://{work}/{name}.db","--component-cache",f"{work}/cache-{name}"],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    procs.append(p); gws[name]=(port,p)
for name,(port,p) in gws.items(): wait(port)
# BIG=1: bench/run.py's 31 KB conversation (a system prompt and 40 turns) instead of one line.
body={"model":"auto:bench","messages":[{"role":"user","content":"hello"}]}
if os.environ.get("BIG")=="1":
    body["messages"]=[{"role":"system","content":"You are a helpful assistant. "*40}]+[{"role":"user" if i%2==0 else "assistant","content":"Here is some context about the WebAssembly component model and routing; "*10+str(i)} for i in range(40)]
open(f"{work}/post.lua","w").write(f'wrk.method="POST"\nwrk.body={json.dumps(json.dumps(body))}\nwrk.headers["Content-Type"]="application/json"\nwrk.headers["Authorization"]="Bearer sk-bench"\n')
def ticks(pid):
    f=open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split(); return int(f[11])+int(f[12])
res={n:[] for n in gws}
names=list(gws)
for port_name in names:  # warm
    subprocess.run(["wrk","-t1","-c8","-d1s","-s",f"{work}/post.lua",f"http://127.0.0.1:{gws[port_name][0]}/v1/chat/completions"],capture_output=True)
for r in range(ROUNDS):
    order=names[r%len(names):]+names[:r%len(names)]
    if r%2: order=order[::-1]
    for n in order:
        port,p=gws[n]; t0=ticks(p.pid)
        out=subprocess.run(["wrk",f"-t{min(2,CONNS)}",f"-c{CONNS}",f"-d{SECS}s","-s",f"{work}/post.lua",f"http://127.0.0.1:{port}/v1/chat/completions"],capture_output=True,text=True).stdout
        t1=ticks(p.pid); reqs=int(re.search(r"(\d+) requests in",out).group(1)); rps=float(re.search(r"Requests/sec:\s+([\d.]+)",out).group(1))
        res[n].append((rps,(t1-t0)*1e6/os.sysconf("SC_CLK_TCK")/reqs))
    print("round",r+1," ".join(f"{n}:{res[n][-1][0]:.0f}/{res[n][-1][1]:.1f}" for n in names),flush=True)
for n in names:
    print(n,"rps",round(statistics.median(x[0] for x in res[n])),"cpu/req",round(statistics.median(x[1] for x in res[n]),1))
for p in procs:
    p.terminate()
