"""The notify function's logic under plain CPython (`python3 -m unittest`
in this directory; scripts/test runs it): runnel's SDK from
../sdk-python, no component."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "sdk-python"))

import runnel  # noqa: E402

import app  # noqa: E402

REPORT = json.dumps(
    {
        "source": {"key": "photos/photo.jpg", "bucket": "uploads", "size": 5, "etag": "e"},
        "metadata": {"user": "alice"},
        "thumbnails": [{"width": 128, "key": "a"}, {"key": "b"}, {"key": "c"}],
    }
).encode()


def context(sinks, config=None):
    return runnel.Context(
        pipeline="notify",
        config=config or {},
        sinks={name: runnel.Sink(name, "topic", f"{name}-target") for name in sinks},
        attempt=1,
    )


def message(data: bytes) -> runnel.Event:
    return runnel.Event(
        id="evt-7",
        source="topic://image-processed",
        type="runnel.message",
        subject="photos/photo.jpg",
        content_type="application/json",
        attributes={},
        data=data,
    )


class Notify(unittest.TestCase):
    def test_notifies_every_declared_sink(self):
        outputs = app.handle(context(["notifications", "webhook"]), message(REPORT))
        self.assertEqual([o.sink for o in outputs], ["notifications", "webhook"])
        self.assertEqual(outputs[0].key, "photos/photo.jpg")
        self.assertEqual(outputs[0].content_type, "application/json")
        self.assertEqual(
            outputs[0].data,
            b'{"message":"photos/photo.jpg for alice: 3 thumbnails ready","user":"alice",'
            b'"source":{"bucket":"uploads","etag":"e","key":"photos/photo.jpg","size":5},'
            b'"thumbnails":[{"key":"a","width":128},{"key":"b"},{"key":"c"}]}',
        )

    def test_skips_undeclared_sinks(self):
        outputs = app.handle(context(["notifications", "audit"]), message(REPORT))
        self.assertEqual([o.sink for o in outputs], ["notifications"])
        outputs = app.handle(context(["audit"], {"sinks": '["audit"]'}), message(REPORT))
        self.assertEqual([o.sink for o in outputs], ["audit"])

    def test_spellings_of_sinks(self):
        for value, names in [('["a","b"]', ["a", "b"]), ("a, b", ["a", "b"]), ("a", ["a"])]:
            self.assertEqual(app.sink_names({"sinks": value}), names)
        for bad in ["", "[]", " , ", "[1,2]", '["a"']:
            with self.assertRaises(runnel.Reject) as caught:
                app.sink_names({"sinks": bad})
            self.assertTrue(str(caught.exception).startswith("config `sinks`"), bad)

    def test_no_sink_at_all_is_rejected(self):
        with self.assertRaises(runnel.Reject) as caught:
            app.handle(context(["other"]), message(REPORT))
        self.assertIn("config `sinks`", str(caught.exception))

    def test_bad_reports_are_rejected_naming_the_event(self):
        bad = [b"{not json", b"NaN", b"[]", b'{"thumbnails":[]}', b'{"source":{"bucket":"b"},"thumbnails":[]}',
               b'{"source":{"key":"k"},"metadata":{"user":1},"thumbnails":[]}', b'{"source":{"key":"k"}}', b"\xff",
               b'{"source":{"key":"k"},"thumbnails":[{"width":1e400}]}', b'\xef\xbb\xbf{"source":{"key":"k"},"thumbnails":[]}']
        for data in bad:
            with self.assertRaises(runnel.Reject) as caught:
                app.handle(context(["notifications"]), message(data))
            self.assertTrue(
                str(caught.exception).startswith(
                    "event evt-7 (subject photos/photo.jpg): not an image-processed report"
                ),
                (data, str(caught.exception)),
            )

    def test_message_without_user_and_singular(self):
        key, notification = app.notify({"source": {"key": "k"}, "thumbnails": [{}]})
        self.assertEqual((key, notification["message"], notification["user"]), ("k", "k: 1 thumbnail ready", None))


if __name__ == "__main__":
    unittest.main()
