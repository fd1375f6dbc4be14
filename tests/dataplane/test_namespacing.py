"""Namespacing of resource URIs and content on the aggregated ``/mcp`` (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.dataplane.namespacing import (
    namespace_content,
    namespace_contents,
    namespace_messages,
    namespace_uri,
    split_uri,
)

SERVER_NAMES = st.from_regex(r"[a-z0-9](?:[a-z0-9_-]{0,20}[a-z0-9])?", fullmatch=True)


@given(server=SERVER_NAMES, uri=st.text(min_size=1))
def test_every_uri_round_trips_exactly(server: str, uri: str) -> None:
    assert split_uri(namespace_uri(server, uri)) == (server, uri)


def test_the_original_uri_is_appended_verbatim() -> None:
    assert namespace_uri("demo", "file:///a b/%2F?x=1#f") == "mcp-gw://demo/file:///a b/%2F?x=1#f"


def test_an_expanded_namespaced_template_gives_the_upstream_s_own_expansion() -> None:
    # RFC 6570 simple expansion percent-encodes "/" in a value; it must reach the upstream
    # exactly as if the client had expanded the upstream's own template.
    template = namespace_uri("demo", "demo://weather/{city}")
    expanded = template.replace("{city}", "a%2Fb")
    assert split_uri(expanded) == ("demo", "demo://weather/a%2Fb")


@pytest.mark.parametrize(
    "uri",
    ["demo://docs/readme", "mcp-gw://", "mcp-gw://demo", "mcp-gw://demo/", "mcp-gw:///x", "MCP-GW://demo/x", ""],
)
def test_a_uri_that_is_not_namespaced_does_not_split(uri: str) -> None:
    assert split_uri(uri) is None


def test_read_contents_get_namespaced_uris_and_other_items_pass_unchanged() -> None:
    contents = [{"uri": "demo://a", "text": "x"}, {"blob": "AA=="}, "junk"]
    assert namespace_contents(contents, "demo") == [
        {"uri": "mcp-gw://demo/demo://a", "text": "x"},
        {"blob": "AA=="},
        "junk",
    ]
    assert namespace_contents(None, "demo") is None


def test_resource_links_and_embedded_resources_are_namespaced() -> None:
    link = {"type": "resource_link", "uri": "demo://a", "name": "a"}
    embedded = {"type": "resource", "resource": {"uri": "demo://b", "text": "t"}}
    text = {"type": "text", "text": "demo://c"}
    assert namespace_content(link, "demo")["uri"] == "mcp-gw://demo/demo://a"
    assert namespace_content(embedded, "demo")["resource"] == {"uri": "mcp-gw://demo/demo://b", "text": "t"}
    assert namespace_content(text, "demo") == text


def test_prompt_messages_with_one_block_or_a_list_of_blocks() -> None:
    embedded = {"type": "resource", "resource": {"uri": "demo://b", "text": "t"}}
    messages = [
        {"role": "user", "content": embedded},
        {"role": "user", "content": [embedded, {"type": "text", "text": "x"}]},
        {"role": "assistant"},
    ]
    out = namespace_messages(messages, "s")
    assert out[0]["content"]["resource"]["uri"] == "mcp-gw://s/demo://b"
    assert out[1]["content"][0]["resource"]["uri"] == "mcp-gw://s/demo://b"
    assert out[1]["content"][1] == {"type": "text", "text": "x"}
    assert out[2] == {"role": "assistant"}
    assert messages[0]["content"]["resource"]["uri"] == "demo://b", "the input is not modified"
