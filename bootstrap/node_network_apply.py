"""The node network applier: a node's desired state in, the commands that reach it out.

This file is the whole logic of the node network, the same on every path. The bootstrap
copies it to each node unchanged, beside the node's desired state (a JSON file rendered from
the plan by bootstrap/node_network.py), and runs

    /usr/bin/python3 -IS /opt/k8s-cni-lab/node_network_apply.py /etc/k8s-cni-lab/node-network.json

The boot unit runs the same command at every boot; `--teardown` before the state file
removes what it added. Each run has three steps, as pyinfra splits them:
1. facts: what the node reports (/proc/sys, /sys/class/net, `ip -4 -o addr`, iptables-save);
2. decide: `setup_steps` (or `teardown_steps`), a pure function of the desired state and the
   facts, returns the commands to run, and none when everything is in place. The tests call
   it with facts written by hand, without root;
3. apply: print each command as a shell would show it, run it, and name the change.

The iptables rules follow flannel's traffic manager: they live in our own chains (LAB-FWD in
filter, LAB-POSTRTG in nat), each entered by one jump from its built-in chain. If any rule or
jump differs, one `iptables-restore --noflush` transaction rebuilds our chains: declaring a
chain there flushes it and nothing else, so nobody else's rules are touched.

It imports only cheap parts of the standard library: it runs at every boot and bootstrap on
every node, and json, subprocess, shlex or dataclasses would each add 7 to 15 ms of start-up
to a run that otherwise takes a few milliseconds.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~9 ms at start-up: only type checkers import it
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

COMMENT_TAG = "k8s-cni-lab"
# Every line this program prints about the node starts so; the bootstrap reads the last one.
LINE_PREFIX = "node-network: "
NO_CHANGES_LINE = f"{LINE_PREFIX}no changes"
# sudo and systemd may start us without the sbin directories, where iptables and ip live.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Sysctls that exist only once their kernel module is loaded (unless it is built in).
SYSCTL_MODULES = {"net.bridge.": "br_netfilter"}
IFF_UP = 0x1
USAGE = "usage: node_network_apply.py [--teardown] STATE_FILE  (STATE_FILE - reads stdin)"


class NodeNetworkError(Exception):
    """What stops a run, said in one line."""


class _Value:
    """A value compared by its fields (dataclasses would cost ~15 ms of start-up)."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Value) or type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


# -- the desired state ------------------------------------------------------------------------

class OwnChain(_Value):
    """One of our chains, and the built-in chain that jumps to it (one jump each)."""

    __slots__ = ("hook", "name", "table")

    def __init__(self, table: str, name: str, hook: str) -> None:
        self.table, self.name, self.hook = table, name, hook


class Rule(_Value):
    """One iptables rule: its table and chain, the match and target, and a visible tag."""

    __slots__ = ("chain", "comment", "spec", "table")

    def __init__(self, table: str, chain: str, spec: tuple[str, ...], comment: str) -> None:
        # iptables-restore only understands double quotes: keep comments free of quoting.
        if any(char in comment for char in "\"'\\\n"):
            raise ValueError(f"rule comment {comment!r} must not contain quotes")
        self.table, self.chain, self.spec, self.comment = table, chain, tuple(spec), comment

    def args(self) -> tuple[str, ...]:
        """The spec with the comment match placed before the target, as iptables-save does."""
        target = self.spec.index("-j")
        comment = ("-m", "comment", "--comment", self.comment)
        return (*self.spec[:target], *comment, *self.spec[target:])

    def argv(self, action: str) -> tuple[str, ...]:
        """The iptables command for -A, -C, -D or -I."""
        return ("iptables", "-w", "-t", self.table, action, self.chain, *self.args())

    def command(self, action: str) -> str:
        """The same command as shell text."""
        return shell_join(self.argv(action))

    def restore_line(self, action: str) -> str:
        """The same rule as an iptables-restore line (and as iptables-save prints it)."""
        args = " ".join(f'"{arg}"' if " " in arg else arg for arg in self.args())
        return f"{action} {self.chain} {args}"


class Bridge(_Value):
    """The bridge pods plug into, holding the pod gateway address and no other IPv4 address."""

    __slots__ = ("address", "name")

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address


class DesiredState(_Value):
    """What one node must have. No bridge means the bridge is left as it is."""

    __slots__ = ("bridge", "chains", "node", "rules", "sysctls")

    def __init__(self, node: str, sysctls: Iterable[tuple[str, str]], bridge: Bridge | None,
                 chains: Iterable[OwnChain], rules: Iterable[Rule]) -> None:
        self.node, self.bridge = node, bridge
        self.sysctls, self.chains, self.rules = tuple(sysctls), tuple(chains), tuple(rules)


def jumps_into(chains: Iterable[OwnChain]) -> list[Rule]:
    """The one jump from each chain's built-in chain into it."""
    return [Rule(chain.table, chain.hook, ("-j", chain.name), f"{COMMENT_TAG} jump to {chain.name}")
            for chain in chains]


def state_to_json(state: DesiredState) -> dict[str, Any]:
    bridge = state.bridge
    return {
        "node": state.node,
        "sysctls": dict(state.sysctls),
        "bridge": None if bridge is None else {"name": bridge.name, "address": bridge.address},
        "chains": [{"table": c.table, "name": c.name, "hook": c.hook} for c in state.chains],
        "rules": [{"table": r.table, "chain": r.chain, "spec": list(r.spec),
                   "comment": r.comment} for r in state.rules],
    }


def state_from_json(document: dict[str, Any]) -> DesiredState:
    bridge = document["bridge"]
    return DesiredState(
        node=document["node"],
        sysctls=document["sysctls"].items(),
        bridge=None if bridge is None else Bridge(bridge["name"], bridge["address"]),
        chains=[OwnChain(c["table"], c["name"], c["hook"]) for c in document["chains"]],
        rules=[Rule(r["table"], r["chain"], tuple(r["spec"]), r["comment"])
               for r in document["rules"]])


# -- facts: what the node reports -------------------------------------------------------------

class LinkFacts(_Value):
    """What sysfs says about the bridge's name: its kind and whether it is up."""

    __slots__ = ("is_bridge", "up")

    def __init__(self, *, is_bridge: bool, up: bool) -> None:
        self.is_bridge, self.up = is_bridge, up


class NodeFacts(_Value):
    """The node as it reports itself: sysctl values (None: no such sysctl), the bridge's
    link (None: no such link) and the text of `ip -4 -o addr show dev <bridge>` and of
    iptables-save."""

    __slots__ = ("addresses", "iptables_save", "link", "sysctls")

    def __init__(self, *, sysctls: dict[str, str | None], link: LinkFacts | None,
                 addresses: str = "", iptables_save: str = "") -> None:
        self.sysctls, self.link = sysctls, link
        self.addresses, self.iptables_save = addresses, iptables_save


def parse_addresses(text: str) -> list[str]:
    """The addresses in `ip -4 -o addr` output: "5: cni0    inet 10.244.1.1/24 brd ..."."""
    return [fields[3] for fields in (line.split() for line in text.splitlines())
            if len(fields) > 3 and fields[2] == "inet"]


def parse_iptables_save(text: str) -> dict[str, dict[str, list[str]]]:
    """table -> chain -> its rules as iptables-save prints them ("-A chain ..."). A declared
    chain without rules maps to an empty list; a missing chain is absent."""
    tables: dict[str, dict[str, list[str]]] = {}
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split(" ", 2)[1], []).append(line)
    return tables


# -- decide: pure functions of the desired state and the facts --------------------------------

class Step(_Value):
    """One command to run, with its input, and the change it makes (None: a part of the next
    step's change)."""

    __slots__ = ("argv", "change", "stdin")

    def __init__(self, argv: Sequence[str], *, stdin: str | None = None,
                 change: str | None = None) -> None:
        self.argv, self.stdin, self.change = tuple(argv), stdin, change


def setup_steps(state: DesiredState, facts: NodeFacts) -> list[Step]:
    """Everything that differs from the desired state, in order; [] when nothing does."""
    return [*sysctl_steps(state.sysctls, facts.sysctls),
            *bridge_steps(state.bridge, facts.link, parse_addresses(facts.addresses)),
            *iptables_steps(state.chains, state.rules, parse_iptables_save(facts.iptables_save))]


def sysctl_steps(wanted: Sequence[tuple[str, str]],
                 current: dict[str, str | None]) -> list[Step]:
    """Set at run time, never in /etc/sysctl.d: the local lab's nodes share the host's /etc,
    and the boot unit sets them again at every boot anyway."""
    missing = [name for name, _ in wanted if current.get(name) is None]
    modules = dict.fromkeys(module for prefix, module in SYSCTL_MODULES.items()
                            for name in missing if name.startswith(prefix))
    steps = [Step(("modprobe", module), change=f"loaded {module}") for module in modules]
    steps += [Step(("sysctl", "-q", "-w", f"{name}={value}"), change=f"set {name}={value}")
              for name, value in wanted if current.get(name) != value]
    return steps


def bridge_steps(bridge: Bridge | None, link: LinkFacts | None,
                 addresses: Sequence[str]) -> list[Step]:
    """The bridge up, holding its address and no other IPv4 address."""
    if bridge is None:
        return []
    name, address = bridge.name, bridge.address
    if link is None:  # all three in one process: the first run, and every boot
        batch = (f"link add name {name} type bridge\n"
                 f"addr add {address} broadcast + dev {name}\n"
                 f"link set dev {name} up\n")
        return [Step(("ip", "-batch", "-"), stdin=batch,
                     change=f"created bridge {name} with {address}, up")]
    if not link.is_bridge:
        raise NodeNetworkError(f"{name} exists but is not a bridge; remove it and re-run")
    others = [other for other in addresses if other != address]
    steps = [Step(("ip", "addr", "del", other, "dev", name), change=f"removed {other} from {name}")
             for other in others]
    # Deleting a primary address also deletes the secondaries of its subnet, so an address
    # listed before ours takes ours with it: put ours back (replace adds or keeps it).
    if address not in addresses or addresses.index(address) > 0:
        steps.append(Step(("ip", "addr", "replace", address, "broadcast", "+", "dev", name),
                          change=f"added {address} to {name}"))
    if not link.up:
        steps.append(Step(("ip", "link", "set", "dev", name, "up"), change=f"set {name} up"))
    return steps


def iptables_steps(chains: Sequence[OwnChain], rules: Sequence[Rule],
                   saved: dict[str, dict[str, list[str]]]) -> list[Step]:
    """Nothing if our chains hold exactly our rules and each has its one jump; otherwise one
    transaction that rebuilds our chains (flannel's ensure: check all, else rebuild)."""
    if not chains or iptables_in_place(chains, rules, saved):
        return []
    names = " and ".join(chain.name for chain in chains)
    return [Step(("iptables-restore", "-w", "--noflush"),
                 stdin=restore_input(chains, rules, saved),
                 change=f"rebuilt iptables chains {names}")]


def iptables_in_place(chains: Sequence[OwnChain], rules: Sequence[Rule],
                      saved: dict[str, dict[str, list[str]]]) -> bool:
    for chain in chains:
        wanted = [rule.restore_line("-A") for rule in rules
                  if (rule.table, rule.chain) == (chain.table, chain.name)]
        if saved.get(chain.table, {}).get(chain.name) != wanted:
            return False
    return all(jump_count(jump, saved) == 1 for jump in jumps_into(chains))


def jump_count(jump: Rule, saved: dict[str, dict[str, list[str]]]) -> int:
    return saved.get(jump.table, {}).get(jump.chain, []).count(jump.restore_line("-A"))


def restore_input(chains: Sequence[OwnChain], rules: Sequence[Rule],
                  saved: dict[str, dict[str, list[str]]]) -> str:
    """One table after the other: declare our chains (which flushes them), append our rules,
    then make sure of one jump each: kept if it is the only one; else every copy deleted
    and one inserted first."""
    lines: list[str] = []
    for table in dict.fromkeys(chain.table for chain in chains):
        ours = [chain for chain in chains if chain.table == table]
        lines.append(f"*{table}")
        lines += [f":{chain.name} - [0:0]" for chain in ours]
        lines += [rule.restore_line("-A") for rule in rules
                  if rule.table == table and rule.chain in {chain.name for chain in ours}]
        for jump in jumps_into(ours):
            count = jump_count(jump, saved)
            if count != 1:
                lines += [jump.restore_line("-D")] * count + [jump.restore_line("-I")]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def teardown_steps(state: DesiredState, facts: NodeFacts) -> list[Step]:
    """Removes exactly what setup added, and only what exists: the jumps first (so no packet
    is sent into a chain that is going away), our chains, the bridge. Sysctls stay: their
    earlier values were never recorded, and other software may rely on forwarding."""
    saved = parse_iptables_save(facts.iptables_save)
    steps: list[Step] = []
    for jump in jumps_into(state.chains):
        steps += [Step(jump.argv("-D"), change=f"removed jump to {jump.spec[-1]}")
                  ] * jump_count(jump, saved)
    for chain in state.chains:
        if chain.name in saved.get(chain.table, {}):
            iptables = ("iptables", "-w", "-t", chain.table)
            steps += [Step((*iptables, "-F", chain.name)),
                      Step((*iptables, "-X", chain.name),
                           change=f"removed chain {chain.name} ({chain.table})")]
    # A link of another kind was never ours: setup refuses it.
    if state.bridge is not None and facts.link is not None and facts.link.is_bridge:
        name = state.bridge.name
        steps.append(Step(("ip", "link", "del", "dev", name), change=f"removed bridge {name}"))
    return steps


# -- the node: gather facts, run commands ------------------------------------------------------

def gather_facts(state: DesiredState) -> NodeFacts:
    """Files where the kernel shows them; processes only for what has no file: the
    addresses (when the bridge exists) and the rules (when we manage chains)."""
    sysctls = {name: read_sysctl(name) for name, _ in state.sysctls}
    link = read_link(state.bridge.name) if state.bridge is not None else None
    addresses = ""
    if state.bridge is not None and link is not None and link.is_bridge:
        addresses = run(("ip", "-4", "-o", "addr", "show", "dev", state.bridge.name),
                        capture=True)
    saved = run(("iptables-save",), capture=True) if state.chains else ""
    return NodeFacts(sysctls=sysctls, link=link, addresses=addresses, iptables_save=saved)


def read_sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as value:
            return value.read().strip()
    except FileNotFoundError:
        return None


def read_link(name: str) -> LinkFacts | None:
    link = f"/sys/class/net/{name}"
    if not os.path.exists(link):
        return None
    with open(f"{link}/flags") as flags:
        up = bool(int(flags.read(), 16) & IFF_UP)
    return LinkFacts(is_bridge=os.path.isdir(f"{link}/bridge"), up=up)


def run(argv: Sequence[str], *, stdin: str | None = None, capture: bool = False) -> str:
    """Run a command (subprocess would cost ~12 ms to import), feeding it `stdin`; returns
    its output if `capture`, else lets it through. NodeNetworkError if it fails."""
    child_in, to_child = os.pipe() if stdin is not None else (None, None)
    from_child, child_out = os.pipe() if capture else (None, None)
    actions = [(os.POSIX_SPAWN_DUP2, end, target)
               for end, target in ((child_in, 0), (child_out, 1)) if end is not None]
    sys.stdout.flush()  # our lines before the command's
    try:
        pid = os.posix_spawnp(argv[0], list(argv), os.environ, file_actions=actions)
    except OSError as error:
        raise NodeNetworkError(f"{argv[0]}: {error.strerror}") from error
    finally:
        for end in (child_in, child_out):
            if end is not None:
                os.close(end)
    if to_child is not None:
        with open(to_child, "w") as pipe:  # a few lines: the pipe holds them all
            pipe.write(stdin or "")
    output = ""
    if from_child is not None:
        with open(from_child) as pipe:
            output = pipe.read()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise NodeNetworkError(f"{shell_join(argv)} exited with {code}")
    return output


def run_step(step: Step) -> None:
    run(step.argv, stdin=step.stdin)


def apply(steps: Sequence[Step], run_step: Callable[[Step], object] = run_step) -> int:
    """Show each command as a shell would (`set -x`, input as a here-document), run it, and
    name its change; the last line counts the changes. Returns how many there were."""
    for step in steps:
        shown = shell_join(step.argv)
        print(f"+ {shown} <<'EOF'\n{step.stdin}EOF" if step.stdin else f"+ {shown}")
        run_step(step)
        if step.change:
            print(f"{LINE_PREFIX}{step.change}")
    changes = sum(1 for step in steps if step.change)
    print(f"{LINE_PREFIX}{changes} change(s)" if changes else NO_CHANGES_LINE, flush=True)
    return changes


SAFE_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                            "@%+=:,./-_")


def shell_join(argv: Iterable[str]) -> str:
    """shlex.join without importing shlex (which imports re)."""
    return " ".join(word if word and set(word) <= SAFE_CHARACTERS
                    else "'" + word.replace("'", "'\"'\"'") + "'" for word in argv)


def read_state(path: str) -> DesiredState:
    with open(sys.stdin.fileno() if path == "-" else path, closefd=path != "-") as source:
        return state_from_json(json_loads(source.read()))


def json_loads(text: str) -> Any:
    """json.loads through json's C scanner: `import json` costs ~8 ms (it pulls in re), as
    bootstrap/cni/lab_cni/fastjson.py explains. Bad input goes to json for its message."""
    from _json import make_scanner

    class Defaults:  # the attributes make_scanner reads from a json.JSONDecoder
        strict, object_hook, object_pairs_hook = True, None, None
        parse_float, parse_int, parse_constant = float, int, float

    start = len(text) - len(text.lstrip())
    try:
        value, end = make_scanner(Defaults())(text, start)  # type: ignore[arg-type]
    except (StopIteration, SystemError, ValueError):
        value, end = None, -1
    if end < 0 or text[end:].strip():
        import json

        return json.loads(text)
    return value


def main(argv: Sequence[str]) -> int:
    teardown = argv[1:2] == ["--teardown"]
    paths = argv[2:] if teardown else argv[1:]
    if len(paths) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    os.environ["PATH"] = SEARCH_PATH
    try:
        state = read_state(paths[0])
        facts = gather_facts(state)
        apply(teardown_steps(state, facts) if teardown else setup_steps(state, facts))
    except NodeNetworkError as error:
        sys.stdout.flush()
        print(f"{LINE_PREFIX}{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()  # then nothing is left to write: skip the interpreter's teardown (~1 ms)
    os._exit(status)
