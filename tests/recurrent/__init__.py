"""Tests of gradscope.recurrent: known answers, brute-force twins, custom cells."""
