"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0), run by the system Python that has PyGObject.

Serves an H.264 MP4 at rtsp://127.0.0.1:PORT/cam over TCP and UDP, in real time (the
server paces the file by its clock). Prints "ready" once listening; stops on SIGTERM.
Usage: /usr/bin/python3 rtsp_server.py PORT FILE.mp4

With RTSP_CREDENTIALS=USER:PASSWORD in the environment (never on the command line: the
security tests check every process's argv), the stream needs HTTP basic auth: a client
without those credentials gets 401 Unauthorized.
"""

import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, path = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 '
                       "config-interval=1 )")
    factory.set_shared(True)
    credentials = os.environ.get("RTSP_CREDENTIALS", "")
    if credentials:
        user, _, password = credentials.partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        sys.exit(1)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
