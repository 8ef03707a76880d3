// Command payload is booted by package vm's tests. It prints what the
// guest handed it and ends as its first argument says: "exit N",
// "poweroff" (without returning to /init), "hang", or "run PROGRAM ARGS..."
// (runs it and exits with its status).
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

func main() {
	wd, _ := os.Getwd()
	_, err := os.Stat("testdata/payload/main.go")
	fmt.Printf("payload: args=%q env=%q wd=%s testdata=%v uid=%d\n",
		os.Args[1:], os.Getenv("RHIZOME_VM_TEST"), wd, err == nil, os.Getuid())
	if len(os.Args) < 2 {
		os.Exit(100)
	}
	switch os.Args[1] {
	case "exit":
		code, _ := strconv.Atoi(os.Args[2])
		os.Exit(code)
	case "poweroff":
		syscall.Sync()
		syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	case "hang":
		select {}
	case "run":
		cmd := exec.Command(os.Args[2], os.Args[3:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		if err != nil {
			fmt.Println("payload:", err)
			os.Exit(102)
		}
		os.Exit(0)
	}
	os.Exit(101)
}
