"""Tests of gradscope.diagnosis and gradscope.fixes: statuses, findings, fixes."""
