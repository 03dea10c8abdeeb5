"""Every component id of the dashboard, in one place.

Pages and callbacks import their ids from here, never spell them inline, so a renamed id is a
one-line change and the browser tests select exactly what the pages render. Ids carry their
page as a prefix because Dash needs them unique across the whole app (the router's validation
layout holds every page at once).
"""

from __future__ import annotations

# The shell around every page.
NAV = "nav"
NAV_LINK = "nav-link"  # pattern-matching type: {"type": NAV_LINK, "index": path}

# Sources page ("/").
SOURCES_INTERVAL = "sources-interval"
SOURCES_VERSION = "sources-version"
SOURCES_TABLE = "sources-table"
SOURCES_EMPTY = "sources-empty"
SOURCES_DELETE = "sources-delete"  # pattern-matching type: {"type": SOURCES_DELETE, "index": source_id}
SOURCES_CONFIRM = "sources-confirm"
SOURCES_PENDING_DELETE = "sources-pending-delete"
SOURCES_MESSAGE = "sources-message"

# Timeline page ("/source/<source_id>").
TIMELINE_SOURCE = "timeline-source"
TIMELINE_VERSION = "timeline-version"
TIMELINE_RANGE = "timeline-range"
TIMELINE_INTERVAL = "timeline-interval"
TIMELINE_HEADER = "timeline-header"
TIMELINE_FACTS = "timeline-facts"
TIMELINE_VALUES = "timeline-values"
TIMELINE_RANGE_LABEL = "timeline-range-label"
TIMELINE_EXPORT = "timeline-export"
TIMELINE_DOWNLOAD = "timeline-download"
TIMELINE_GRAPH = "timeline-graph"
TIMELINE_TRACKS = "timeline-tracks"
TIMELINE_VIDEO_BOX = "timeline-video-box"  # the player panel (video, or why there is none)
TIMELINE_VIDEO_STATE = "timeline-video-state"  # dcc.Store: the panel's VideoState status
TIMELINE_VIDEO_INTERVAL = "timeline-video-interval"  # runs only while the video is being prepared
TIMELINE_VIDEO = "timeline-video"  # the <video> element (dashboard/assets/player.js finds it by id)
TIMELINE_VIDEO_MESSAGE = "timeline-video-message"  # "the file is gone", "preparing", ...
TIMELINE_CURSOR = "timeline-cursor"  # the playback cursor drawn over the timeline (player.js moves it)
TIMELINE_LIVE_BOX = "timeline-live-box"  # a camera's newest annotated frame (monitor --live-view)
TIMELINE_LIVE_AT = "timeline-live-at"  # dcc.Store: the time of the frame shown
TIMELINE_LIVE_INTERVAL = "timeline-live-interval"  # runs on camera pages only
TIMELINE_LIVE_IMAGE = "timeline-live-image"

# Track page ("/track/<source_id>/<track_id>").
TRACK_KEY = "track-key"
TRACK_VERSION = "track-version"
TRACK_RANGE = "track-range"
TRACK_INTERVAL = "track-interval"
TRACK_HEADER = "track-header"
TRACK_GRAPH = "track-graph"
TRACK_SEGMENTS = "track-segments"

# Events page ("/events").
EVENTS_SOURCE = "events-source"
EVENTS_INTERVAL = "events-interval"
EVENTS_VERSION = "events-version"
EVENTS_TABLE = "events-table"

# Upload page ("/upload").
UPLOAD_DROP = "upload-drop"
UPLOAD_JOB = "upload-job"
UPLOAD_INTERVAL = "upload-interval"
UPLOAD_PROGRESS = "upload-progress"
UPLOAD_STATUS = "upload-status"
UPLOAD_RESULT = "upload-result"
UPLOAD_REDIRECT = "upload-redirect"

# Shared by the timeline and track pages.
TRACK_CARD = "track-card"  # pattern-matching type: {"type": TRACK_CARD, "index": track_id}
