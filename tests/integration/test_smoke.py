from tests.conftest import dump


async def test_create_project_writes_the_documented_keys(api, etcd):
    resp = await api.post("/api/projects", json={"name": "demo"})
    assert resp.status == 201, await resp.text()
    pid = (await resp.json())["id"]
    assert set(await dump(etcd)) == {
        "/lastbackend/helper/projects/demo",
        f"/lastbackend/projects/{pid}/meta",
    }
