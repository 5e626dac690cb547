"""Drive the queue double with the official Taskcluster Python client.

Reads TASKCLUSTER_ROOT_URL, TASKCLUSTER_CLIENT_ID and TASKCLUSTER_ACCESS_TOKEN, and QUEUE_DOUBLE_TASK_QUEUE_ID
(default "proj-test/python"). It creates three tasks: the first it reads back and cancels; the second it claims,
reclaims and reports completed with the temporary credentials the queue hands out (so the client's own Hawk
signing of certificates is exercised); on the third it creates artifacts with the run's credentials (a
reference, and two object artifacts uploaded with the client's own upload helper through the Object service,
one by putUrl and one inline) and reads them back with getArtifact. Prints one JSON object with every reply.
"""

import importlib.metadata
import json
import os
import sys

import requests
import taskcluster
import taskcluster.upload


def main():
    options = taskcluster.optionsFromEnvironment()
    # The double is local and fast; don't let the client's retry back-off hide a failure for long.
    options["maxRetries"] = 2
    queue = taskcluster.Queue(options)
    task_queue_id = os.environ.get("QUEUE_DOUBLE_TASK_QUEUE_ID", "proj-test/python")
    out = {"clientVersion": importlib.metadata.version("taskcluster")}

    def definition(name):
        return {
            "taskQueueId": task_queue_id,
            "created": taskcluster.stringDate(taskcluster.fromNow("0 seconds")),
            "deadline": taskcluster.stringDate(taskcluster.fromNow("1 hour")),
            "payload": {"image": "busybox", "command": ["true"], "maxRunTime": 60},
            "metadata": {
                "name": name,
                "description": "created by integration/tests/python/queue_client.py",
                "owner": "docker-worker-tests@example.com",
                "source": "https://github.com/taskcluster/docker-worker",
            },
        }

    # 1. create, read back, cancel.
    task_id = taskcluster.slugId()
    out["taskId"] = task_id
    out["created"] = queue.createTask(task_id, definition("python cancel"))
    out["task"] = queue.task(task_id)
    out["status"] = queue.status(task_id)
    out["canceled"] = queue.cancelTask(task_id)

    # 2. create, claim, reclaim and complete with the run's temporary credentials.
    run_task_id = taskcluster.slugId()
    out["runTaskId"] = run_task_id
    queue.createTask(run_task_id, definition("python run"))
    claimed = queue.claimWork(task_queue_id, {"workerGroup": "python", "workerId": "w1", "tasks": 1})
    out["claimed"] = claimed
    claim = next(c for c in claimed["tasks"] if c["status"]["taskId"] == run_task_id)
    run_id = claim["runId"]
    # The client encodes the credentials it is given in place; hand it copies.
    as_task = taskcluster.Queue(
        {"rootUrl": options["rootUrl"], "credentials": dict(claim["credentials"]), "maxRetries": 2}
    )
    out["reclaimed"] = as_task.reclaimTask(run_task_id, str(run_id))
    as_task = taskcluster.Queue(
        {"rootUrl": options["rootUrl"], "credentials": dict(out["reclaimed"]["credentials"]), "maxRetries": 2}
    )
    out["completed"] = as_task.reportCompleted(run_task_id, str(run_id))

    # 3. a failure the client must report as such: reclaiming a resolved run.
    try:
        as_task.reclaimTask(run_task_id, str(run_id))
        out["reclaimAfterResolve"] = {"statusCode": 200}
    except taskcluster.exceptions.TaskclusterRestFailure as e:
        out["reclaimAfterResolve"] = {"statusCode": e.status_code, "code": e.body.get("code")}

    # 4. artifacts: a reference, and object artifacts uploaded through the Object service.
    art_task_id = taskcluster.slugId()
    out["artifactTaskId"] = art_task_id
    queue.createTask(art_task_id, definition("python artifacts"))
    claimed = queue.claimWork(task_queue_id, {"workerGroup": "python", "workerId": "w2", "tasks": 1})
    claim = next(c for c in claimed["tasks"] if c["status"]["taskId"] == art_task_id)
    run_id = str(claim["runId"])
    as_task = taskcluster.Queue(
        {"rootUrl": options["rootUrl"], "credentials": dict(claim["credentials"]), "maxRetries": 2}
    )
    expires = taskcluster.stringDate(taskcluster.fromNow("1 hour"))
    out["reference"] = as_task.createArtifact(
        art_task_id,
        run_id,
        "public/python/reference.txt",
        {"storageType": "reference", "url": "https://example.com/python", "contentType": "text/plain",
         "expires": expires},
    )
    # The 303's body: the client does not follow the redirect.
    out["referenceGet"] = queue.getArtifact(art_task_id, run_id, "public/python/reference.txt")

    def upload(name, data):
        created = as_task.createArtifact(
            art_task_id,
            run_id,
            name,
            {"storageType": "object", "contentType": "application/octet-stream", "expires": expires},
        )
        object_service = taskcluster.Object(
            {"rootUrl": options["rootUrl"], "credentials": dict(created["credentials"]), "maxRetries": 2}
        )
        taskcluster.upload.uploadFromBuf(
            projectId=created["projectId"],
            name=created["name"],
            contentType="application/octet-stream",
            contentLength=len(data),
            expires=created["expires"],
            uploadId=created["uploadId"],
            maxRetries=2,
            objectService=object_service,
            data=data,
        )
        as_task.finishArtifact(art_task_id, run_id, name, {"uploadId": created["uploadId"]})
        got = queue.getArtifact(art_task_id, run_id, name)
        content = requests.get(got["url"], timeout=30).content
        return {"created": created, "get": got, "matches": content == data, "length": len(content)}

    out["objectPutUrl"] = upload("public/python/big.bin", bytes(range(256)) * 64)
    out["objectInline"] = upload("public/python/small.bin", b"small and inline")
    out["listed"] = queue.listArtifacts(art_task_id, run_id)
    as_task.reportCompleted(art_task_id, run_id)

    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
