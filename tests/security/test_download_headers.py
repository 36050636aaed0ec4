"""A file is served as the bytes it is: never sniffed, never run, whatever its declared type."""

from tests.support.gateway import running_gateway
from tests.support.infra import Infra


async def test_an_uploaded_html_file_is_served_inert(infra: Infra) -> None:
    async with running_gateway(infra) as gw, gw.client("acme") as http:
        page = b"<html><script>alert(document.cookie)</script></html>"
        uploaded = await http.post("/v1/files", content=page, headers={"Content-Type": "text/html"})
        assert uploaded.status_code == 201, uploaded.text

        download = await http.get(f"/v1/files/{uploaded.json()['id']}")

        assert download.status_code == 200
        assert download.content == page
        assert download.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in download.headers["content-security-policy"]
        assert "default-src 'none'" in download.headers["content-security-policy"]
