"""Create a docker-worker task on a Queue with the official Taskcluster client.

    python3 -m pip install taskcluster
    TASKCLUSTER_ROOT_URL=… TASKCLUSTER_CLIENT_ID=… TASKCLUSTER_ACCESS_TOKEN=… \
        python3 integration/examples/create_task.py [TASK_QUEUE_ID]

Prints the new task id. The payload runs on the busybox fixture image that integration/setup.sh builds.
"""
import sys

import taskcluster

queue = taskcluster.Queue(taskcluster.optionsFromEnvironment())
task_id = taskcluster.slugId()
queue.createTask(
    task_id,
    {
        "taskQueueId": sys.argv[1] if len(sys.argv) > 1 else "docker-worker/local",
        "created": taskcluster.fromNowJSON("0 seconds"),
        "deadline": taskcluster.fromNowJSON("1 hour"),
        "payload": {
            "image": "docker-worker-test/busybox:latest",
            "command": ["/bin/sh", "-c", "echo hello from the queue; uname -a"],
            "maxRunTime": 60,
        },
        "metadata": {
            "name": "hello",
            "description": "a first docker-worker task",
            "owner": "someone@example.com",
            "source": "https://example.com/docker-worker",
        },
    },
)
print(task_id)
