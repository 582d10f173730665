"""`pc sandbox up|down|status` and `pc demo`: a local federation for trying things out."""
from __future__ import annotations

import pathlib
import sys

from pc_client.report import print_json


def cmd_sandbox(args) -> int:
    from pc_client.sandbox import Sandbox
    sb = Sandbox(args.dir)
    if args.action == "up":
        st = sb.up(log=(lambda m: print(m, file=sys.stderr)) if not args.json else (lambda m: None),
                   console=args.console)
        if args.json:
            print_json(st)
        else:
            print(f"sandbox up in {sb.dir}: coordinator {st['coordinator']}, nodes: "
                  + ", ".join(f"{a} {addr}" for a, addr in st["nodes"].items()))
            if st.get("consoles"):
                print("web consoles: " + ", ".join(f"{p} {url}" for p, url in st["consoles"].items())
                      + f"; users and passwords in {sb.root / 'console-users.json'}")
    elif args.action == "down":
        n = sb.down()
        print(f"stopped {n} process(es)")
    else:
        st = sb.state()
        print_json({**st, "running": sb.running()})
    return 0


def cmd_demo(args) -> int:
    from pc_client.demo import run_demo
    return run_demo(pathlib.Path(args.dir), households=args.households, seed=args.seed, keep=args.keep,
                    as_json=args.json)


def add_sandbox(sub) -> None:
    sb = sub.add_parser("sandbox", help="a local federation from a folder of CSVs")
    sb.add_argument("action", choices=("up", "down", "status"))
    sb.add_argument("dir")
    sb.add_argument("--json", action="store_true")
    sb.add_argument("--console", action="store_true", help="up: also start the web consoles (pc console serve)")
    sb.set_defaults(fn=cmd_sandbox)


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="generate a synthetic city, bring a sandbox up, run the allowance rule")
    d.add_argument("--dir", default="pc-demo", help="working folder (default: ./pc-demo)")
    d.add_argument("--households", type=int, default=10000)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_demo)


COMMANDS = {"sandbox": add_sandbox, "demo": add_demo}
