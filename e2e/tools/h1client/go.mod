module agentid.dev/e2e/h1client

go 1.26
