"""A WS-Discovery responder on loopback: a real UDP socket that answers Probes the way cameras do.

The replies follow the ProbeMatches envelopes Hikvision (DS-2CD2xxx, firmware 5.x) and Axis cameras
send, as published in public captures: their namespace prefixes (env/wsadis, SOAP-ENV/wsa), their
scopes (name and hardware percent-encoded, location), an IPv4 and an IPv6 link-local XAddr, and
RelatesTo echoed as `urn:uuid:...` (Hikvision) or `uuid:...` (Axis). A test lists what the
responder sends for each Probe, including garbage, to see what the discovery keeps.
"""

from __future__ import annotations

import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Reply = Callable[[str], bytes]  # the Probe's MessageID -> one datagram

HIKVISION_ENDPOINT = "urn:uuid:544e4d3e-e8b5-11b2-8143-c056e3a1b2c4"
AXIS_ENDPOINT = "urn:uuid:d2ea0b4c-2a57-11b2-8000-accc8e123456"


def hikvision(message_id: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:soapenc="http://www.w3.org/2003/05/soap-encoding" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:trt="http://www.onvif.org/ver10/media/wsdl" xmlns:wsadis="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><env:Header><wsadis:MessageID>urn:uuid:3f2d1a40-e8b5-11b2-8143-c056e3a1b2c4</wsadis:MessageID><wsadis:RelatesTo>{message_id}</wsadis:RelatesTo><wsadis:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsadis:To><wsadis:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsadis:Action><d:AppSequence InstanceId="1718236554" MessageNumber="27"></d:AppSequence></env:Header><env:Body><d:ProbeMatches><d:ProbeMatch><wsadis:EndpointReference><wsadis:Address>{HIKVISION_ENDPOINT}</wsadis:Address></wsadis:EndpointReference><d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types><d:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/Profile/Streaming onvif://www.onvif.org/MAC/c0:56:e3:a1:b2:c4 onvif://www.onvif.org/hardware/DS-2CD2143G2-I onvif://www.onvif.org/name/HIKVISION%20DS-2CD2143G2-I onvif://www.onvif.org/location/city/hangzhou</d:Scopes><d:XAddrs>http://192.168.1.64/onvif/device_service http://[fe80::c256:e3ff:fea1:b2c4]/onvif/device_service</d:XAddrs><d:MetadataVersion>10</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></env:Body></env:Envelope>""".encode()  # noqa: E501


def axis(message_id: str) -> bytes:
    bare = message_id.removeprefix("urn:")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:SOAP-ENC="http://www.w3.org/2003/05/soap-encoding" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><SOAP-ENV:Header><wsa:MessageID>uuid:a8098c1a-f86e-11da-bd1a-00112444be1e</wsa:MessageID><wsa:RelatesTo>{bare}</wsa:RelatesTo><wsa:To SOAP-ENV:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To><wsa:Action SOAP-ENV:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action><d:AppSequence SOAP-ENV:mustUnderstand="true" MessageNumber="3" InstanceId="1700003401"></d:AppSequence></SOAP-ENV:Header><SOAP-ENV:Body><d:ProbeMatches><d:ProbeMatch><wsa:EndpointReference><wsa:Address>{AXIS_ENDPOINT}</wsa:Address></wsa:EndpointReference><d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types><d:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/Profile/Streaming onvif://www.onvif.org/Profile/G onvif://www.onvif.org/name/AXIS%20P1375 onvif://www.onvif.org/hardware/P1375 onvif://www.onvif.org/location/country/indonesia onvif://www.onvif.org/location/city/bontang</d:Scopes><d:XAddrs>http://192.168.1.90/onvif/device_service</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></SOAP-ENV:Body></SOAP-ENV:Envelope>""".encode()  # noqa: E501


def garbage(message_id: str) -> bytes:
    return b"\x00\xff not a SOAP message \xfe"


def wrong_relates_to(message_id: str) -> bytes:
    """A camera answering someone else's Probe (another technician's laptop, a VMS on the LAN)."""
    return hikvision("urn:uuid:00000000-0000-0000-0000-000000000000")


def truncated(message_id: str) -> bytes:
    return axis(message_id)[:700]


def with_doctype(message_id: str) -> bytes:
    return b'<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY lol "lol">]>' + axis(message_id).split(b"?>", 1)[1]


@dataclass
class Responder:
    address: tuple[str, int]
    probes: list[bytes] = field(default_factory=list)

    def probe_fields(self, index: int = 0) -> dict[str, str]:
        """Action, MessageID, To and Types of a received Probe, by element name."""
        root = ET.fromstring(self.probes[index])
        wanted = ("Action", "MessageID", "To", "Types")
        return {e.tag.rsplit("}", 1)[-1]: (e.text or "") for e in root.iter() if e.tag.rsplit("}", 1)[-1] in wanted}


@contextmanager
def onvif_responder(replies: list[Reply]) -> Iterator[Responder]:
    """Answer every Probe received on a loopback UDP port with `replies`, each its own datagram."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    responder = Responder(sock.getsockname())
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            responder.probes.append(data)
            root = ET.fromstring(data)
            message_id = next(e.text or "" for e in root.iter() if e.tag.endswith("}MessageID"))
            for reply in replies:
                sock.sendto(reply(message_id), peer)

    thread = threading.Thread(target=serve, name="onvif-responder", daemon=True)
    thread.start()
    try:
        yield responder
    finally:
        stop.set()
        thread.join(2)
        sock.close()
