package config

import "testing"

// FuzzParse: no input makes the config parser panic, and an accepted
// config is always fully valid (a second validation finds nothing).
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("[listen]\naddr = \"0.0.0.0:25\"\nallow = [\"10.0.0.0/8\"]\n[[listen.users]]\nusername = \"a\"\npassword = \"b\"\n" + minimal))
	f.Add([]byte("[upstream\n"))
	f.Add([]byte("[delivery]\nretry_min = \"1h\"\nretry_max = \"1s\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.toml")
		if err != nil {
			return
		}
		if err := cfg.validate("fuzz.toml", nil, true); err != nil {
			t.Fatalf("accepted config fails validation: %v", err)
		}
	})
}
