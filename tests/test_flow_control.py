"""Flow control over real sockets: slow consumers, pipelining without reading, end of stream (Q-7.6, Q-7.7, P-1.17)."""

from __future__ import annotations

import socket
import threading
import time

from ami_server.testing import make_config, running_server

from helpers import USERS


def config(**server):
    return make_config({"users": USERS}, **server)

def test_slow_consumer_is_cut_off_and_others_are_served_q_7_6():
    limit = 65536
    with running_server(config(output_queue_limit=limit)) as srv:
        slow = socket.create_connection((srv.host, srv.port), timeout=5)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"Action: Login\r\nUsername: reader\r\nSecret: readerpass\r\nEvents: user\r\n\r\n")
        with srv.client() as publisher, srv.client() as pinger:
            publisher.login("admin", "adminpass", events="off")
            pinger.login("reader", "readerpass", events="off")
            payload = "x" * 900
            closed = False
            for i in range(5000):
                publisher.action("UserEvent", [("UserEvent", "Flood"), ("Data", payload)])
                if i % 50 == 0:
                    assert pinger.action("Ping")["Ping"] == "Pong"
                    if srv.call(lambda: srv.server.status().slow_consumer_disconnects):
                        closed = True
                        break
            assert closed, "the stalled session was never disconnected"
            assert pinger.action("Ping")["Ping"] == "Pong"
        slow.close()
        text = srv.log.text()
        assert '"event":"SlowConsumerDisconnect"' in text
        assert '"reason":"slow consumer"' in text
        # Memory stayed bounded: nothing is buffered beyond the limit for any session.
        assert srv.call(lambda: max((len(s.out) for s in srv.server.core.sessions.values()), default=0)) <= limit

def test_pipelining_without_reading_is_slowed_not_cut_q_7_7():
    count = 30000
    with running_server(config(output_queue_limit=65536)) as srv, srv.client(timeout=20) as c:
        c.login("admin", "adminpass", events="off")
        data = b"".join(b"Action: Ping\r\nActionID: p%d\r\n\r\n" % i for i in range(count))
        sender = threading.Thread(target=c.sock.sendall, args=(data,), daemon=True)
        c.sock.settimeout(20)
        sender.start()
        time.sleep(0.5)  # let both socket buffers fill while nobody reads
        for i in range(count):
            reply = c.read_block(timeout=20)
            assert reply["ActionID"] == f"p{i}"
        sender.join(5)
        assert not sender.is_alive()

def test_end_of_stream_answers_complete_messages_p_1_17():
    with running_server(config()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        c.send_raw(b"Action: Ping\r\nActionID: 1\r\n\r\nAction: Ping\r\nActionID: 2\r\n\r\nAction: Pi")
        c.sock.shutdown(socket.SHUT_WR)
        data = c.read_until_closed()
        assert data.count(b"Ping: Pong") == 2 and b"ActionID: 2" in data
