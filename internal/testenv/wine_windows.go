//go:build windows

package testenv

import "golang.org/x/sys/windows"

// UnderWine reports a Windows build running under Wine, which lacks some
// of Windows (a DACL set on a file is not what reading it back shows).
func UnderWine() bool {
	return windows.NewLazySystemDLL("ntdll.dll").NewProc("wine_get_version").Find() == nil
}
