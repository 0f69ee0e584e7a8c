"""Tests of gradscope.render: charts, text, JSON and the demo."""
