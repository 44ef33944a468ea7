"""Tests of {{name}}'s logic under plain CPython: `python3 -m unittest`."""

import unittest

import app
import runnel


def event(data: bytes) -> runnel.Event:
    return runnel.Event("evt-1", "runnel://test", "runnel.message", "sample.json", None, {}, data)


class Greeting(unittest.TestCase):
    def test_greets_by_name(self):
        outputs = app.handle(runnel.Context("{{name}}", {}, {}, 1), event(b'{"name": "Dora"}'))
        self.assertEqual([(o.sink, o.data) for o in outputs], [("results", '{"greeting": "Hello, Dora!"}')])

    def test_refuses_what_it_cannot_read(self):
        for data in [b"{not json", b'{"name": 7}']:
            with self.assertRaises(runnel.Reject):
                app.handle(runnel.Context("{{name}}", {}, {}, 1), event(data))


if __name__ == "__main__":
    unittest.main()
