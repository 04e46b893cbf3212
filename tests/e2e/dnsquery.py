"""One DNS query, run inside a lab namespace by the tests; prints the answer as JSON.

    python3 dnsquery.py SERVER NAME TYPE [--tcp] [--source-port N] [--timeout S]

Output: ``{"rcode": "NOERROR", "answer": [{"name": …, "type": "A", "value": …}, …]}``, or
``{"error": "timeout"}`` (exit 0 either way: the caller decides what an answer means).
"""

from __future__ import annotations

import argparse
import json
import sys

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def query(
    server: str, name: str, rdtype: str, *, tcp: bool, source_port: int, timeout: float
) -> dict[str, object]:
    request = dns.message.make_query(name, rdtype)
    try:
        if tcp:
            response = dns.query.tcp(request, server, timeout=timeout, source_port=source_port)
        else:
            response = dns.query.udp(request, server, timeout=timeout, source_port=source_port)
    except dns.exception.Timeout:
        return {"error": "timeout"}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    answer = [
        {
            "name": str(rrset.name),
            "type": dns.rdatatype.to_text(rrset.rdtype),
            "value": rd.to_text(),
        }
        for rrset in response.answer
        for rd in rrset
    ]
    return {"rcode": dns.rcode.to_text(response.rcode()), "answer": answer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("name")
    parser.add_argument("type")
    parser.add_argument("--tcp", action="store_true")
    parser.add_argument("--source-port", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    result = query(
        args.server,
        args.name,
        args.type,
        tcp=args.tcp,
        source_port=args.source_port,
        timeout=args.timeout,
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
