"""Networks: the VCH's bridge network, published ports (-p/-P) on the VCH's address and loopback,
user-defined networks with DNS (names, aliases, links) and isolation, --network none, outbound
NAT, and a docker-compose app whose services find each other by name.

On KIC every network is a bridge inside the VCH's own network namespace; ports are published
by the endpoint's userland proxy. Everything here runs inside the test's network namespace
(tests/vch/run.sh); containers are reached through its loopback only."""

import json
import secrets
import socket
import subprocess
import threading

import pytest

from conftest import HERE, IS_KIC, _pull_as, free_port, sh, t, wait_until

pytestmark = [pytest.mark.timeout(900), pytest.mark.kic_only]

HTTP_GET = 'printf "GET /{path} HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {host} 80 | tail -n 1'


@pytest.fixture(scope="module")
def nd(request, tmpdir_session):
    """A VCH of its own (networks and a default volume store), busybox present."""
    factory = request.getfixturevalue("vch_factory")
    vch, d = factory(["--volume-store", f"{tmpdir_session}/nvs:default"])
    _pull_as(d, "library/busybox", "busybox:latest")
    yield d


def http(port, path="hostname", timeout=3):
    """GET http://127.0.0.1:port/path through the test namespace's loopback; None if refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET /{path} HTTP/1.0\r\n\r\n".encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        return data.decode(errors="replace")
    except OSError:
        return None


def httpd(d, name, *extra, port_args=()):
    """A busybox httpd serving /etc (so /hostname is the container's hostname)."""
    d.ok("run", "-d", "--name", name, *port_args, *extra, "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")


def rm(d, *names):
    d("rm", "-f", *names, timeout=120)


def test_published_port_answers_and_is_released(nd):
    name, port = nd.name("web"), free_port()
    try:
        httpd(nd, name, port_args=("-p", f"{port}:80"))
        cid = nd.inspect(name, "{{.Id}}")
        body = wait_until("the published port to answer", lambda: (http(port) or "").endswith(cid[:12] + "\n") and http(port), 60)
        assert "200 OK" in body
        assert nd.out("port", name) == f"80/tcp -> 0.0.0.0:{port}"
        ports = nd.inspect(name, "{{json .NetworkSettings.Ports}}")
        assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}, ports
        ps = nd.out("ps", "--filter", f"name={name}", "--format", "{{.Ports}}")
        assert ps == f"0.0.0.0:{port}->80/tcp", ps
        nd.ok("stop", "-t", "1", name)
        assert http(port) is None, "the port still answers after stop"
        assert nd.inspect(name, "{{json .NetworkSettings.Ports}}") == {}
        # Started again, it publishes again.
        nd.ok("start", name)
        wait_until("the port to answer after start", lambda: http(port), 60)
    finally:
        rm(nd, name)
    assert http(port) is None


def test_port_clash_fails_the_start_with_dockers_message(nd):
    a, b, port = nd.name("clash"), nd.name("clash"), free_port()
    try:
        httpd(nd, a, port_args=("-p", f"{port}:80"))
        r = nd("run", "-d", "--name", b, "-p", f"{port}:80", "busybox", "true")
        assert r.rc != 0
        assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in r.err, r.err
        assert "driver failed programming external connectivity on endpoint " + b in r.err, r.err
        assert nd.inspect(b, "{{.State.Status}}") == "created"
        # A port some other program holds.
        other = free_port()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", other))
            s.listen()
            r = nd("run", "--rm", "-p", f"{other}:80", "busybox", "true")
            assert r.rc != 0
            assert f"listen tcp4 0.0.0.0:{other}: bind: address already in use" in r.err, r.err
    finally:
        rm(nd, a, b)


def test_random_host_ports_and_publish_all(nd):
    a, b = nd.name("rnd"), nd.name("all")
    try:
        httpd(nd, a, port_args=("-p", "80"))
        hp = int(nd.out("port", a, "80/tcp").rsplit(":", 1)[1])
        wait_until("the random port to answer", lambda: http(hp), 60)
        httpd(nd, b, "--expose", "80", "--expose", "81/udp", port_args=("-P",))
        ports = nd.inspect(b, "{{json .NetworkSettings.Ports}}")
        assert set(ports) == {"80/tcp", "81/udp"}, ports
        assert all(int(v[0]["HostPort"]) > 0 for v in ports.values()), ports
        hp = int(ports["80/tcp"][0]["HostPort"])
        wait_until("the -P port to answer", lambda: http(hp), 60)
    finally:
        rm(nd, a, b)


def test_udp_port(nd):
    """A UDP echo (perl in the debian image: busybox's nc has no UDP) through `-p .../udp`."""
    name, port = nd.name("udp"), free_port()
    try:
        _pull_as(nd, "library/debian", "debian:latest")
        nd.ok("run", "-d", "--name", name, "-p", f"{port}:9999/udp", "debian", "perl", "-MIO::Socket::INET", "-e",
              '$s = IO::Socket::INET->new(LocalPort => 9999, Proto => "udp") or die "socket: $!";'
              ' while (1) { $s->recv($m, 100); $s->send("pong $m") }', timeout=300)

        def pong():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.sendto(b"ping\n", ("127.0.0.1", port))
                try:
                    return b"pong" in s.recv(100)
                except OSError:
                    return False
        wait_until("a UDP answer through the published port", pong, 60)
    finally:
        rm(nd, name)


def test_inspect_shows_addresses_and_network_mode(nd):
    name = nd.name("insp")
    try:
        nd.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
        ns = nd.inspect(name, "{{json .NetworkSettings}}")
        assert nd.inspect(name, "{{.HostConfig.NetworkMode}}") == "bridge"
        br = ns["Networks"]["bridge"]
        assert br["IPAddress"].startswith("172.16.") and br["IPPrefixLen"] == 16, br
        assert br["Gateway"] == "172.16.0.1"
        octets = [int(x) for x in br["IPAddress"].split(".")]
        assert br["MacAddress"] == "02:42:" + ":".join(f"{o:02x}" for o in octets)
        assert ns["IPAddress"] == br["IPAddress"] and ns["Gateway"] == br["Gateway"]
        assert br["NetworkID"] == json.loads(nd.out("network", "inspect", "bridge"))[0]["Id"]
        # The guest has exactly that address on eth0, and loopback.
        addr = nd.out("exec", name, "ip", "-o", "-4", "addr")
        assert any(ln.split()[1] == "eth0" and f"{br['IPAddress']}/16" in ln for ln in addr.splitlines()), addr
        assert "127.0.0.1/8" in addr
        net = json.loads(nd.out("network", "inspect", "bridge"))[0]
        cid = nd.inspect(name, "{{.Id}}")
        assert net["Containers"][cid]["IPv4Address"] == br["IPAddress"] + "/16", net["Containers"]
        nd.ok("stop", "-t", "1", name)
        assert nd.inspect(name, "{{.NetworkSettings.Networks.bridge.IPAddress}}") == ""
    finally:
        rm(nd, name)


def test_network_none_has_loopback_only(nd):
    out = nd.out("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link")
    assert "lo" in out and "eth0" not in out, out
    r = nd("run", "--rm", "--network", "none", "-p", "80", "busybox", "true")
    assert r.rc != 0 and "conflicting options" in r.err, r.err


def test_user_networks_names_aliases_links_and_isolation(nd):
    n1, n2 = f"kn1-{secrets.token_hex(2)}", f"kn2-{secrets.token_hex(2)}"
    a1, a2, b1, lk = nd.name("a"), nd.name("a"), nd.name("b"), nd.name("lk")
    try:
        nd.ok("network", "create", n1)
        nd.ok("network", "create", "--subnet", "10.77.0.0/24", "--gateway", "10.77.0.254", n2)
        httpd(nd, a1, "--network", n1, "--network-alias", "svc")
        httpd(nd, a2, "--network", n1, "--network-alias", "svc")
        httpd(nd, b1, "--network", n2)
        ip_a1 = nd.inspect(a1, "{{json .NetworkSettings.Networks}}")[n1]["IPAddress"]
        ip_a2 = nd.inspect(a2, "{{json .NetworkSettings.Networks}}")[n1]["IPAddress"]
        ip_b1 = nd.inspect(b1, "{{json .NetworkSettings.Networks}}")[n2]["IPAddress"]
        assert ip_b1.startswith("10.77.0."), ip_b1
        assert ip_a1 != ip_a2
        id_a1 = nd.inspect(a1, "{{.Id}}")[:12]
        script = "; ".join([
            f"nslookup -type=a {a1} | grep Address: | tail -n 1",
            "nslookup -type=a svc | grep Address: | tail -n 2",
            HTTP_GET.format(path="hostname", host=a1),
            HTTP_GET.format(path="hostname", host="svc"),
        ])
        out = nd.out("run", "--rm", "--network", n1, "busybox", "sh", "-c", script, timeout=120)
        assert f"Address: {ip_a1}" in out, out
        assert ip_a2 in out, out
        assert id_a1 in out, out
        # --link: the alias resolves for the linking container.
        out = nd.out("run", "--rm", "--name", lk, "--network", n1, "--link", f"{a2}:db", "busybox", "sh", "-c",
                     "nslookup -type=a db | grep Address: | tail -n 1; " + HTTP_GET.format(path="hostname", host="db"), timeout=120)
        assert f"Address: {ip_a2}" in out and nd.inspect(a2, "{{.Id}}")[:12] in out, out
        # From the other network: neither the name nor the address.
        r = nd("run", "--rm", "--network", n2, "busybox", "sh", "-c",
               f"nslookup -type=a {a1} || echo NO-NAME; " + HTTP_GET.format(path="hostname", host=ip_a1) + " || true; echo END",
               timeout=120)
        assert "NO-NAME" in r.out and id_a1 not in r.out and "END" in r.out, r
        # The second network's containers resolve theirs.
        out = nd.out("run", "--rm", "--network", n2, "busybox", "nslookup", "-type=a", b1)
        assert f"Address: {ip_b1}" in out, out
    finally:
        rm(nd, a1, a2, b1, lk)
        nd("network", "rm", n1, n2)


def test_network_create_ls_inspect_rm_prune(nd):
    n = f"knet-{secrets.token_hex(2)}"
    c = nd.name("user")
    try:
        nid = nd.out("network", "create", "--subnet", "10.88.0.0/16", "--gateway", "10.88.0.1",
                     "--ip-range", "10.88.5.0/24", "--label", "team=kic", n)
        net = json.loads(nd.out("network", "inspect", n))[0]
        assert net["Id"] == nid and net["Driver"] == "bridge" and net["Scope"] == "local"
        assert net["IPAM"]["Config"] == [{"Subnet": "10.88.0.0/16", "Gateway": "10.88.0.1", "IPRange": "10.88.5.0/24"}]
        assert net["Labels"] == {"team": "kic"}
        names = nd.out("network", "ls", "--format", "{{.Name}}").split()
        assert {"bridge", "none", n} <= set(names), names
        assert nd.out("network", "ls", "-q", "--filter", "label=team=kic") == nid[:12]
        assert nd.out("network", "ls", "--filter", "type=custom", "--format", "{{.Name}}").split().count("bridge") == 0
        r = nd("network", "create", n)
        assert r.rc != 0 and f"network with name {n} already exists" in r.err, r.err
        r = nd("network", "create", "--subnet", "10.88.1.0/24", n + "x")
        assert r.rc != 0 and "overlaps" in r.err, r.err
        r = nd("network", "rm", "bridge")
        assert r.rc != 0 and "bridge is a pre-defined network and cannot be removed" in r.err, r.err
        r = nd("network", "inspect", "no-such-net")
        assert r.rc != 0 and "network no-such-net not found" in r.err, r.err
        nd.ok("run", "-d", "--name", c, "--network", n, "--ip", "10.88.5.77", "busybox", "sleep", "600")
        assert nd.inspect(c, "{{json .NetworkSettings.Networks}}")[n]["IPAddress"] == "10.88.5.77"
        r = nd("network", "rm", n)
        assert r.rc != 0 and "has active endpoints" in r.err, r.err
        # prune keeps networks in use and the built-in ones.
        assert n not in nd.out("network", "prune", "-f")
        rm(nd, c)
        out = nd.out("network", "prune", "-f")
        assert n in out, out
        assert n not in nd.out("network", "ls", "--format", "{{.Name}}").split()
    finally:
        rm(nd, c)
        nd("network", "rm", n)


def test_connect_and_disconnect_a_stopped_container(nd):
    n = f"kcn-{secrets.token_hex(2)}"
    c = nd.name("conn")
    try:
        nd.ok("network", "create", n)
        nd.ok("create", "--name", c, "busybox", "sleep", "600")
        nd.ok("network", "connect", "--alias", "extra", n, c)
        r = nd("network", "connect", n, c)
        assert r.rc != 0 and "already exists in network" in r.err, r.err
        nd.ok("start", c)
        nets = nd.inspect(c, "{{json .NetworkSettings.Networks}}")
        assert set(nets) == {"bridge", n} and nets[n]["IPAddress"], nets
        links = nd.out("exec", c, "ip", "-o", "-4", "addr")
        assert nets["bridge"]["IPAddress"] in links and nets[n]["IPAddress"] in links, links
        r = nd("network", "disconnect", n, c)
        assert r.rc != 0 and "stop" in r.err, r.err
        nd.ok("stop", "-t", "1", c)
        nd.ok("network", "disconnect", n, c)
        assert set(nd.inspect(c, "{{json .NetworkSettings.Networks}}")) == {"bridge"}
    finally:
        rm(nd, c)
        nd("network", "rm", n)


def uplink_address():
    """The host side of the VCH's uplink in this namespace (169.254.x.1)."""
    out = sh(["ip", "-o", "-4", "addr"]).out
    addrs = [ln.split()[3].split("/")[0] for ln in out.splitlines() if " kicu" in ln]
    return addrs


def test_outbound_nat_reaches_the_vch_host(nd):
    """A container reaches a server on the host side of the VCH (masqueraded at the uplink)."""
    port = free_port()
    seen = []
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen()
    srv.settimeout(t(120))

    def serve():
        try:
            conn, peer = srv.accept()
            seen.append(peer[0])
            conn.sendall(b"hello-from-host\n")
            conn.close()
        except OSError:
            pass
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        candidates = uplink_address()
        assert candidates, "no kicu* uplink interface in the test namespace"
        host = candidates[-1]
        out = nd.out("run", "--rm", "busybox", "sh", "-c", f"nc -w 5 {host} {port} </dev/null", timeout=120)
        assert "hello-from-host" in out, out
        th.join(5)
        assert seen and seen[0].startswith("169.254."), seen
    finally:
        srv.close()


def test_two_vchs_cannot_reach_each_other(nd, vch_factory):
    """A second VCH (its bridge range elsewhere) has its own namespace: its containers cannot
    reach the first VCH's container, which answers from its own VCH."""
    name = nd.name("iso")
    try:
        httpd(nd, name)
        ip = nd.inspect(name, "{{.NetworkSettings.IPAddress}}")
        cid = nd.inspect(name, "{{.Id}}")[:12]
        get = HTTP_GET.format(path="hostname", host=ip) + "; echo END"
        assert cid in nd.out("run", "--rm", "busybox", "sh", "-c", get, timeout=120)
        _, d2 = vch_factory(["--bridge-network-range", "10.66.0.0/16"])
        _pull_as(d2, "library/busybox", "busybox:latest")
        out = d2.out("run", "--rm", "busybox", "sh", "-c", "ip -o -4 addr show eth0; " + get, timeout=120)
        assert "inet 10.66.0." in out, out
        assert cid not in out and "END" in out, out
    finally:
        rm(nd, name)


def compose(d, project, *args, env=None, timeout=240):
    e = dict(d.env)
    e.update(env or {})
    return subprocess.run(
        ["docker-compose", "-f", str(HERE / "compose" / "web-app.yml"), "-p", project, "--no-ansi", *args],
        env=e, capture_output=True, text=True, timeout=t(timeout))


def test_compose_app_with_published_port_service_names_and_volume(nd):
    project = f"kw{secrets.token_hex(3)}"
    port = free_port()
    first = secrets.token_hex(4)
    env = {"WEB_PORT": str(port), "TOKEN": first}
    try:
        up = compose(nd, project, "up", "-d", env=env)
        assert up.returncode == 0, up
        body = wait_until("web to answer with what api serves from its volume",
                          lambda: (http(port, "cgi-bin/call") or "").rstrip().endswith(first) and http(port, "cgi-bin/call"),
                          120)
        assert "200 OK" in body, body
        down = compose(nd, project, "down", "-t", "2", env=env)
        assert down.returncode == 0, down
        assert http(port) is None
        vols = nd.out("volume", "ls", "-q").split()
        assert f"{project}_data" in vols, vols
        up = compose(nd, project, "up", "-d", env={"WEB_PORT": str(port), "TOKEN": "second"})
        assert up.returncode == 0, up
        wait_until("the data to survive down/up", lambda: (http(port, "cgi-bin/call") or "").rstrip().endswith(first), 120)
    finally:
        compose(nd, project, "down", "-v", "-t", "1", env=env)


class Segment:
    """A host bridge in libvirtd's namespace (no address there) with a veth whose other end, in
    the test's namespace, has `gateway` (CIDR): a segment the test owns, like an admin's VLAN."""

    def __init__(self, gateway):
        import os
        tag = secrets.token_hex(2)
        self.br, self.va, self.vb = f"kictb{tag}", f"kictva{tag}", f"kictvb{tag}"
        self.tag = tag
        libvirtd = open("/run/libvirtd.pid").read().strip()
        self.root = ["nsenter", f"--net=/proc/{libvirtd}/ns/net"]
        sh(self.root + ["ip", "link", "add", self.br, "type", "bridge"])
        try:
            sh(self.root + ["ip", "link", "set", self.br, "up"])
            sh(self.root + ["ip", "link", "add", self.va, "type", "veth", "peer", "name", self.vb])
            sh(self.root + ["ip", "link", "set", self.va, "master", self.br, "up"])
            sh(self.root + ["ip", "link", "set", self.vb, "netns", str(os.getpid())])
            sh(["ip", "addr", "add", gateway, "dev", self.vb])
            sh(["ip", "link", "set", self.vb, "up"])
        except BaseException:
            self.delete()
            raise

    def delete(self):
        sh(self.root + ["ip", "link", "del", self.br], check=False)
        sh(self.root + ["ip", "link", "del", self.va], check=False)


def answers_http(ip, cid):
    try:
        with socket.create_connection((ip, 80), timeout=3) as s:
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            return cid in s.makefile("rb").read().decode(errors="replace")
    except OSError:
        return False


def test_container_network_reaches_containers_without_nat(vch_factory):
    """VIC's container network: a host bridge mapped into the VCH as a Docker network, with a
    fixed range; a container on it answers on the segment directly."""
    seg = Segment("10.99.7.1/24")
    br, tag = seg.br, seg.tag
    name = f"cn-{tag}"
    try:
        vch, d = vch_factory(["--container-network", f"{br}:lan",
                              "--container-network-gateway", "lan:10.99.7.1/24",
                              "--container-network-ip-range", "lan:10.99.7.16/28"])
        cfg = sh([vch.machine, "--state-root", str(vch.root), "inspect", "config", vch.name]).out
        assert f"--container-network {br}:lan" in cfg and "--container-network-ip-range lan:10.99.7.16/28" in cfg, cfg
        net = json.loads(d.out("network", "inspect", "lan"))[0]
        assert net["Driver"] == "external" and net["IPAM"]["Config"][0]["Subnet"] == "10.99.7.0/24", net
        _pull_as(d, "library/busybox", "busybox:latest")
        d.ok("run", "-d", "--name", name, "--network", "lan", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
        ip = d.inspect(name, "{{json .NetworkSettings.Networks}}")["lan"]["IPAddress"]
        assert ip.startswith("10.99.7.") and 16 <= int(ip.rsplit(".", 1)[1]) < 32, ip
        cid = d.inspect(name, "{{.Id}}")[:12]
        wait_until("the container to answer on the container network without NAT",
                   lambda: answers_http(ip, cid), 90)
        r = d("network", "rm", "lan")
        assert r.rc != 0 and "container network" in r.err, r.err
        # A bridge that does not exist is refused at create; so is a range without a gateway.
        r = sh([vch.machine, "--state-root", str(vch.root), "create", "--name", f"kicbad{tag}",
                "--container-network", f"nosuchbr{tag}:x", "--container-network-gateway", "x:10.1.1.1/24",
                "--container-network-ip-range", "x:10.1.1.0/28"], check=False)
        assert r.rc != 0 and f"no Linux bridge \"nosuchbr{tag}\"" in r.out + r.err, r
        r = sh([vch.machine, "--state-root", str(vch.root), "create", "--name", f"kicbad{tag}",
                "--container-network", f"{br}:x", "--container-network-ip-range", "x:10.1.1.0/28"], check=False)
        assert r.rc != 0 and "needs --container-network-gateway x:" in r.out + r.err, r
    finally:
        if "d" in locals():
            d("rm", "-f", name)
        seg.delete()


def test_container_network_with_dhcp(vch_factory, tmp_path):
    """A container network without a range: containers ask the segment's DHCP server (dnsmasq
    here) for their address, route and nameserver, and keep the address across restarts."""
    seg = Segment("10.99.8.1/24")
    name = f"dh-{seg.tag}"
    server = subprocess.Popen(
        ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
         f"--interface={seg.vb}", "--bind-interfaces", "--dhcp-authoritative",
         "--dhcp-range=10.99.8.50,10.99.8.60,255.255.255.0,1h",
         "--dhcp-option=option:router,10.99.8.1", "--dhcp-option=option:dns-server,10.99.8.1",
         f"--dhcp-leasefile={tmp_path}/leases", f"--pid-file={tmp_path}/dnsmasq.pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        vch, d = vch_factory(["--container-network", f"{seg.br}:dlan"])
        cfg = sh([vch.machine, "--state-root", str(vch.root), "inspect", "config", vch.name]).out
        assert f"--container-network {seg.br}:dlan" in cfg and "dlan:" not in cfg, cfg
        info = sh([vch.machine, "--state-root", str(vch.root), "inspect", vch.name]).out
        assert "addresses from DHCP" in info, info
        net = json.loads(d.out("network", "inspect", "dlan"))[0]
        assert net["Driver"] == "external" and net["IPAM"]["Config"] == [], net
        _pull_as(d, "library/busybox", "busybox:latest")
        d.ok("run", "-d", "--name", name, "--network", "dlan", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc",
             timeout=180)
        ep = d.inspect(name, "{{json .NetworkSettings.Networks}}")["dlan"]
        ip = ep["IPAddress"]
        assert ip.startswith("10.99.8.") and 50 <= int(ip.rsplit(".", 1)[1]) <= 60, ep
        assert ep["IPPrefixLen"] == 24 and ep["Gateway"] == "10.99.8.1", ep
        assert ip in (tmp_path / "leases").read_text(), "dnsmasq gave that lease"
        cid = d.inspect(name, "{{.Id}}")[:12]
        wait_until("the container to answer at its DHCP address", lambda: answers_http(ip, cid), 90)
        assert "nameserver 10.99.8.1" in d.out("exec", name, "cat", "/etc/resolv.conf")
        assert "default via 10.99.8.1" in d.out("exec", name, "ip", "route")
        r = d("run", "--rm", "--network", "dlan", "--ip", "10.99.8.55", "busybox", "true")
        assert r.rc != 0 and "gets its addresses from DHCP" in r.err, r.err
        # The same MAC asks again after a restart: the same address.
        d.ok("stop", "-t", "1", name, timeout=120)
        d.ok("start", name, timeout=180)
        assert d.inspect(name, "{{json .NetworkSettings.Networks}}")["dlan"]["IPAddress"] == ip
        wait_until("the container to answer again", lambda: answers_http(ip, cid), 90)
    finally:
        if "d" in locals():
            d("rm", "-f", name)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        seg.delete()
