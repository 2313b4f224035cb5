"""Parsing XML that other systems send: no entities, no DTDs, no network, no huge trees.

A fresh parser per call: lxml parsers must not be shared between threads.
"""

from __future__ import annotations

from lxml import etree


def parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
